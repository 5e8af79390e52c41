//! PyTorch memory snapshots (`torch.cuda.memory._dump_snapshot` pickles) read into
//! [`DeviceTrace`]s.
//!
//! The input is untrusted: every value the replay uses is checked (present, an integer,
//! non-negative, in range), and the work is bounded by the file's size — memo references
//! can make a small pickle name the same list a million times, so the walk counts every
//! entry, segment and block it visits against a budget proportional to the file. A history
//! with a gap (recording switched off and on: a block allocated again without its free, a
//! free of a block the trace already freed) is read as such, with a note, not rejected. This
//! module must not replay anything or invent figures the snapshot does not hold.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::pickle::{self, PVal};
use super::settings::settings_of;
use super::{Block, DeviceTrace, Event, EventKind, MAX_BYTES, Trace, TraceError, TraceFormat, err};

/// Entries visited per byte of pickle, at most (each distinct entry takes several bytes;
/// only memo references can make more).
const WORK_PER_BYTE: usize = 1;
/// Notes kept per device (a damaged history could otherwise print one per event).
const MAX_NOTES: usize = 5;
/// Entries visited at most whatever the file's size.
const WORK_FLOOR: usize = 1 << 16;

struct Walk<'a> {
    name: &'a str,
    left: usize,
}

impl Walk<'_> {
    fn items(&mut self, v: &PVal, what: &str) -> Result<Vec<PVal>, TraceError> {
        let items = v
            .items()
            .ok_or_else(|| err(self.name, None, format!("{what} is not a list")))?;
        self.left = self.left.checked_sub(items.len()).ok_or_else(|| {
            err(
                self.name,
                None,
                format!(
                    "{what}: the snapshot expands to more entries than its size allows \
                     (memo references repeat the same data)"
                ),
            )
        })?;
        Ok(items)
    }
}

/// A non-negative integer field; `None` when absent. Booleans are not integers here.
fn uint(v: &PVal, key: &str) -> Result<Option<u64>, String> {
    match v.get(key) {
        None => Ok(None),
        Some(PVal::Int(i)) if i >= 0 => Ok(Some(i as u64)),
        Some(PVal::Int(i)) => Err(format!("'{key}' is negative ({i})")),
        Some(_) => Err(format!("'{key}' is not an integer")),
    }
}

fn req(v: &PVal, key: &str) -> Result<u64, String> {
    uint(v, key)?.ok_or_else(|| format!("'{key}' is missing"))
}

fn size_of(v: &PVal, key: &str) -> Result<u64, String> {
    let s = req(v, key)?;
    if s > MAX_BYTES {
        return Err(format!("'{key}' {s} is out of range (at most {MAX_BYTES})"));
    }
    Ok(s)
}

pub(crate) fn parse_snapshot(name: &str, data: &[u8]) -> Result<Trace, TraceError> {
    let root = pickle::load(data).map_err(|e| err(name, None, format!("bad pickle: {e}")))?;
    let mut walk = Walk {
        name,
        left: data.len().saturating_mul(WORK_PER_BYTE).max(WORK_FLOOR),
    };
    let traces = root
        .get("device_traces")
        .ok_or_else(|| err(name, None, "not a memory snapshot: no 'device_traces' list"))?;
    let traces = walk.items(&traces, "not a memory snapshot: 'device_traces'")?;
    let segments = root
        .get("segments")
        .ok_or_else(|| err(name, None, "not a memory snapshot: no 'segments' list"))?;
    let segments = walk.items(&segments, "not a memory snapshot: 'segments'")?;
    let settings = settings_of(&root).map_err(|m| err(name, None, m))?;
    // Segments by device, read once.
    let mut by_device: BTreeMap<u64, Vec<(usize, PVal)>> = BTreeMap::new();
    for (k, s) in segments.into_iter().enumerate() {
        let d = uint(&s, "device")
            .map_err(|m| err(name, Some(format!("segment {k}")), m))?
            .unwrap_or(0);
        by_device.entry(d).or_default().push((k, s));
    }
    let mut devices = Vec::new();
    for (d, entries) in traces.iter().enumerate() {
        let segs = by_device.remove(&(d as u64)).unwrap_or_default();
        let settings = settings.clone();
        if let Some(dev) = read_device(&mut walk, d, entries, &segs, settings)? {
            devices.push(dev);
        }
    }
    Ok(Trace {
        path: name.to_string(),
        format: TraceFormat::PytorchSnapshot,
        devices,
    })
}

fn read_device(
    walk: &mut Walk<'_>,
    d: usize,
    entries: &PVal,
    segments: &[(usize, PVal)],
    settings: Option<crate::config::Config>,
) -> Result<Option<DeviceTrace>, TraceError> {
    let name = walk.name;
    let entries = walk.items(entries, &format!("device_traces[{d}]"))?;
    let mut events = Vec::with_capacity(entries.len());
    let mut live: HashMap<u64, u64> = HashMap::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut initial_live = Vec::new();
    let mut notes = Vec::new();
    let mut net_segments: i128 = 0;
    // Each oom event: (index, device free bytes, PyTorch's net segment bytes then).
    let mut ooms: Vec<(usize, u64, i128)> = Vec::new();
    // Expandable segments map pages: their segment events are not whole segments.
    let mut maps_pages = false;
    for (i, e) in entries.iter().enumerate() {
        let at = || Some(format!("device {d} event {i}"));
        let action = e
            .get("action")
            .and_then(|a| a.as_str())
            .ok_or_else(|| err(name, at(), "event without an 'action' string"))?;
        let kind = match &*action {
            "alloc" => EventKind::Alloc,
            "free_completed" => EventKind::Free,
            "segment_alloc" | "segment_map" => EventKind::SegmentAlloc,
            "segment_free" | "segment_unmap" => EventKind::SegmentFree,
            "oom" => EventKind::Oom,
            _ => continue, // free_requested, snapshot, ...
        };
        if kind == EventKind::Oom {
            // PyTorch writes the driver's free bytes as `device_free` (and in `addr`).
            let size = size_of(e, "size").map_err(|m| err(name, at(), m))?;
            let free = match uint(e, "device_free").map_err(|m| err(name, at(), m))? {
                Some(f) => f,
                None => uint(e, "addr")
                    .map_err(|m| err(name, at(), m))?
                    .unwrap_or(0),
            };
            let stream = uint(e, "stream")
                .map_err(|m| err(name, at(), m))?
                .unwrap_or(0);
            ooms.push((events.len(), free, net_segments));
            events.push(Event {
                kind,
                addr: free.min(MAX_BYTES),
                size,
                stream,
            });
            continue;
        }
        let field = |k| req(e, k).map_err(|m| err(name, at(), m));
        let addr = field("addr")?;
        let size = size_of(e, "size").map_err(|m| err(name, at(), m))?;
        let stream = uint(e, "stream")
            .map_err(|m| err(name, at(), m))?
            .unwrap_or(0);
        match kind {
            EventKind::Alloc => {
                if live.contains_key(&addr) {
                    // The block's free fell in a gap of the history (recording off, then on).
                    notes.push(format!(
                        "device {d} event {i}: {addr:#x} allocated again without a free (a gap \
                         in the history); the earlier block is taken as freed here"
                    ));
                    let old = live.remove(&addr).unwrap_or(0);
                    events.push(Event {
                        kind: EventKind::Free,
                        addr,
                        size: old,
                        stream,
                    });
                }
                if size == 0 {
                    continue;
                }
                live.insert(addr, size);
                seen.insert(addr);
            }
            EventKind::Free => {
                if live.remove(&addr).is_none() {
                    if seen.contains(&addr) {
                        // Allocated in a gap of the history: its lifetime is unknown.
                        notes.push(format!(
                            "device {d} event {i}: free of {addr:#x}, allocated in a gap of the \
                             history; skipped"
                        ));
                        continue;
                    }
                    if size == 0 {
                        continue;
                    }
                    // Allocated before the trace began.
                    initial_live.push(Block { addr, size, stream });
                    seen.insert(addr);
                }
            }
            EventKind::SegmentAlloc => {
                maps_pages |= &*action == "segment_map";
                net_segments += i128::from(size);
            }
            EventKind::SegmentFree => net_segments -= i128::from(size),
            EventKind::Oom => {}
        }
        events.push(Event {
            kind,
            addr,
            size,
            stream,
        });
    }
    let mut total: u64 = 0;
    let mut held: BTreeMap<u64, Block> = BTreeMap::new();
    let mut active_at_end: HashSet<u64> = HashSet::new();
    for (k, s) in segments {
        let at = || Some(format!("segment {k}"));
        let seg_size = size_of(s, "total_size").map_err(|m| err(name, at(), m))?;
        total = total
            .checked_add(seg_size)
            .filter(|&t| t <= MAX_BYTES)
            .ok_or_else(|| {
                err(
                    name,
                    at(),
                    format!("segments total more than {MAX_BYTES} bytes"),
                )
            })?;
        let seg_stream = uint(s, "stream")
            .map_err(|m| err(name, at(), m))?
            .unwrap_or(0);
        let seg_addr = req(s, "address").map_err(|m| err(name, at(), m))?;
        let seg = Block {
            addr: seg_addr,
            size: seg_size,
            stream: seg_stream,
        };
        if held.insert(seg_addr, seg).is_some() {
            return Err(err(
                name,
                at(),
                format!("a second segment at {seg_addr:#x}"),
            ));
        }
        let blocks = match s.get("blocks") {
            None => Vec::new(),
            Some(b) => walk.items(&b, &format!("segment {k} 'blocks'"))?,
        };
        for (j, b) in blocks.iter().enumerate() {
            let at = || Some(format!("segment {k} block {j}"));
            let state = b.get("state").and_then(|x| x.as_str());
            let active = matches!(
                state.as_deref(),
                Some("active_allocated") | Some("active_pending_free")
            );
            if !active {
                continue;
            }
            let addr = req(b, "address").map_err(|m| err(name, at(), m))?;
            if !active_at_end.insert(addr) {
                return Err(err(
                    name,
                    at(),
                    format!("a second active block at {addr:#x}"),
                ));
            }
            if live.contains_key(&addr) {
                continue;
            }
            if seen.contains(&addr) {
                notes.push(format!(
                    "segment {k} block {j}: {addr:#x} allocated in a gap of the history; skipped"
                ));
                continue;
            }
            let req_size = uint(b, "requested_size").map_err(|m| err(name, at(), m))?;
            let size = match req_size {
                Some(r) if r > 0 => r,
                _ => size_of(b, "size").map_err(|m| err(name, at(), m))?,
            };
            if size > MAX_BYTES {
                return Err(err(name, at(), format!("size {size} is out of range")));
            }
            if size > 0 {
                initial_live.push(Block {
                    addr,
                    size,
                    stream: seg_stream,
                });
            }
        }
    }
    if events.is_empty() && initial_live.is_empty() {
        return Ok(None);
    }
    let start = i128::from(total) - net_segments;
    let expandable = settings
        .as_ref()
        .is_some_and(|c| c.expandable_segments && c.expandable_segments_set)
        || maps_pages;
    let initial_segments = if expandable {
        Vec::new()
    } else {
        for e in events.iter().rev() {
            match e.kind {
                EventKind::SegmentAlloc => {
                    held.remove(&e.addr);
                }
                EventKind::SegmentFree => {
                    held.insert(
                        e.addr,
                        Block {
                            addr: e.addr,
                            size: e.size,
                            stream: e.stream,
                        },
                    );
                }
                _ => {}
            }
        }
        held.into_values().collect()
    };
    if start < 0 {
        notes.push(format!(
            "device {d}: the segment events release {} bytes more than the final segments \
             and the trace reserved; PyTorch's starting figure is taken as 0",
            -start
        ));
    }
    if notes.len() > MAX_NOTES {
        let more = notes.len() - MAX_NOTES;
        notes.truncate(MAX_NOTES);
        notes.push(format!("device {d}: {more} more gaps in the history"));
    }
    // The memory an out-of-memory event shows PyTorch could have had: what the driver had
    // free plus what PyTorch reserved then. The largest is the capacity to replay on.
    let device_total = ooms
        .iter()
        .map(|&(_, free, net)| {
            let reserved = (start.max(0) + net).clamp(0, i128::from(MAX_BYTES)) as u64;
            free.saturating_add(reserved).min(MAX_BYTES)
        })
        .max();
    Ok(Some(DeviceTrace {
        device: d,
        events,
        initial_live,
        settings,
        device_total,
        pytorch_start_reserved: Some(start.clamp(0, i128::from(MAX_BYTES)) as u64),
        initial_segments,
        notes,
    }))
}
