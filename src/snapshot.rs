//! Memory snapshots in PyTorch's format (`torch.cuda.memory._snapshot()` /
//! `_dump_snapshot`): a pickled dict with `segments` (each with its `blocks`),
//! `device_traces` (the event history per device) and `allocator_settings`, which PyTorch's
//! memory viewer (`pytorch.org/memory_viz`, `torch.cuda._memory_viz`) loads, and that
//! `cudalloc replay` reads back (`allocator_settings` in the form PyTorch writes, so its
//! reader validates them as `--conf` does).

use std::collections::BTreeMap;

use serde_pickle::{HashableValue, SerOptions, Value};

use crate::allocator::CachingAllocator;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::policy::BlockState;

fn key(s: &str) -> HashableValue {
    HashableValue::String(s.to_string())
}

fn int(v: u64) -> Value {
    Value::I64(i64::try_from(v).unwrap_or(i64::MAX))
}

fn dict(entries: Vec<(&str, Value)>) -> Value {
    Value::Dict(
        entries
            .into_iter()
            .map(|(k, v)| (key(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

impl<B: Backend> CachingAllocator<B> {
    /// The snapshot as a Python value tree (see the module docs).
    ///
    /// # Errors
    /// None in practice; kept fallible for symmetry with the byte export.
    pub fn snapshot_value(&self) -> Result<Value> {
        let mut segments = Vec::new();
        let mut traces = Vec::new();
        for device in 0..self.device_count() {
            for seg in self.snapshot(device)? {
                let mut allocated = 0;
                let mut active = 0;
                let mut requested = 0;
                let blocks: Vec<Value> = seg
                    .blocks
                    .iter()
                    .map(|b| {
                        let state = match b.state {
                            BlockState::Allocated => {
                                allocated += b.size;
                                active += b.size;
                                requested += b.requested;
                                "active_allocated"
                            }
                            BlockState::Pending => {
                                active += b.size;
                                requested += b.requested;
                                "active_pending_free"
                            }
                            BlockState::Free => "inactive",
                        };
                        dict(vec![
                            ("address", int(b.addr)),
                            ("size", int(b.size)),
                            ("requested_size", int(b.requested)),
                            ("state", Value::String(state.into())),
                            ("frames", Value::List(Vec::new())),
                        ])
                    })
                    .collect();
                segments.push(dict(vec![
                    ("device", int(device as u64)),
                    ("address", int(seg.addr)),
                    ("total_size", int(seg.size)),
                    ("allocated_size", int(allocated)),
                    ("active_size", int(active)),
                    ("requested_size", int(requested)),
                    ("stream", int(seg.stream)),
                    ("segment_type", Value::String(seg.pool.name().into())),
                    (
                        "segment_pool_id",
                        Value::Tuple(vec![Value::I64(0), Value::I64(0)]),
                    ),
                    ("is_expandable", Value::Bool(seg.expandable)),
                    ("frames", Value::List(Vec::new())),
                    ("blocks", Value::List(blocks)),
                ]));
            }
            let entries = self
                .history(device)?
                .into_iter()
                .map(|e| {
                    let mut fields = vec![
                        ("action", Value::String(e.action.name().into())),
                        ("addr", int(e.addr)),
                        ("size", int(e.size)),
                        ("stream", int(e.stream)),
                        ("time_us", int(e.time_us)),
                        ("frames", Value::List(Vec::new())),
                    ];
                    if e.action == crate::history::Action::Oom {
                        // As PyTorch writes it: the driver's free bytes, also in `addr`.
                        fields.push(("device_free", int(e.addr)));
                    }
                    if e.context != 0 {
                        // For whoever set it to turn into `frames` (the PyTorch glue).
                        fields.push(("cudalloc_context", int(e.context)));
                    }
                    dict(fields)
                })
                .collect();
            traces.push(Value::List(entries));
        }
        let cfg = self.config();
        let settings = dict(vec![
            ("PYTORCH_CUDA_ALLOC_CONF", Value::String(format!("{cfg}"))),
            (
                "max_split_size",
                Value::I64(if cfg.max_split_size == u64::MAX {
                    -1
                } else {
                    cfg.max_split_size as i64
                }),
            ),
            (
                "garbage_collection_threshold",
                Value::F64(cfg.garbage_collection_threshold),
            ),
            ("expandable_segments", Value::Bool(cfg.expandable_segments)),
            // cudalloc's own (PyTorch's readers skip it): how expandable growth was mapped,
            // so that a replay of this snapshot maps the same way.
            ("expandable_min_map", int(cfg.large_min_map())),
            (
                "max_non_split_rounding_size",
                int(cfg.max_non_split_rounding),
            ),
            (
                // PyTorch's form: interval bound in MiB (a string) → divisions.
                "roundup_power2_divisions",
                Value::Dict(
                    cfg.roundup_power2_divisions
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| (HashableValue::String((1u64 << i).to_string()), int(d)))
                        .collect(),
                ),
            ),
        ]);
        Ok(dict(vec![
            ("segments", Value::List(segments)),
            ("device_traces", Value::List(traces)),
            ("allocator_settings", settings),
        ]))
    }

    /// The snapshot as pickle bytes (protocol 3), ready for `pickle.load` or PyTorch's
    /// memory viewer. Record the history first with
    /// [`CachingAllocator::record_history`] for `device_traces` to hold events.
    ///
    /// # Errors
    /// [`Error::Internal`] if serialization fails.
    pub fn snapshot_pickle(&self) -> Result<Vec<u8>> {
        let v = self.snapshot_value()?;
        serde_pickle::value_to_vec(&v, SerOptions::new())
            .map_err(|e| Error::Internal(format!("snapshot pickling failed: {e}")))
    }
}
