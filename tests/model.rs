//! Model test: random sequences of allocator operations over the simulated backend, with
//! every invariant checked after every step.
//!
//! Cases: `CUDALLOC_MODEL_CASES` (default 256, what CI runs). For a long local run:
//! `CUDALLOC_MODEL_CASES=10000 cargo test --release --test model`.

use std::collections::HashMap;

use cudalloc::policy::round_size;
use cudalloc::{Allocation, BackendError, CachingAllocator, Config, Error, SimBackend};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};

const DEVICES: usize = 2;
const STREAMS: usize = 3;
const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        dev: usize,
        stream: usize,
        size: u64,
        raw: bool,
    },
    Free {
        pick: usize,
    },
    RecordStream {
        pick: usize,
        stream: usize,
    },
    CompleteStream {
        dev: usize,
        stream: usize,
    },
    CompleteAll,
    EmptyCache {
        dev: Option<usize>,
    },
    FailNextAlloc {
        nth: u64,
        oom: bool,
    },
    SetFraction {
        dev: usize,
        fraction: f64,
    },
    SetCapacity {
        dev: usize,
        mib: u64,
    },
}

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1u64..=MIB,
        2 => (MIB + 1)..=(10 * MIB),
        1 => (10 * MIB)..=(64 * MIB),
        2 => prop::sample::select(vec![512u64, 4096, 65536, MIB, 3 * MIB, 12 * MIB, 25 * MIB]),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..DEVICES, 0..STREAMS, size_strategy(), any::<bool>())
            .prop_map(|(dev, stream, size, raw)| Op::Alloc { dev, stream, size, raw }),
        8 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        3 => (any::<usize>(), 0..STREAMS).prop_map(|(pick, stream)| Op::RecordStream { pick, stream }),
        2 => (0..DEVICES, 0..STREAMS).prop_map(|(dev, stream)| Op::CompleteStream { dev, stream }),
        1 => Just(Op::CompleteAll),
        1 => prop::option::of(0..DEVICES).prop_map(|dev| Op::EmptyCache { dev }),
        1 => (1u64..4, any::<bool>()).prop_map(|(nth, oom)| Op::FailNextAlloc { nth, oom }),
        1 => (0..DEVICES, 0.3f64..1.0).prop_map(|(dev, fraction)| Op::SetFraction { dev, fraction }),
        1 => (0..DEVICES, 128u64..768).prop_map(|(dev, mib)| Op::SetCapacity { dev, mib }),
    ]
}

fn config_strategy() -> impl Strategy<Value = Config> {
    prop_oneof![
        Just(Config::default()),
        Just(Config::default().with_max_split_size_mb(40).unwrap()),
        Just(Config::default().with_roundup_power2_divisions(4).unwrap()),
        Just(Config::parse("roundup_power2_divisions:[2:8,16:2,>:1]").unwrap()),
        Just(
            Config::default()
                .with_garbage_collection_threshold(0.5)
                .unwrap()
        ),
        Just(Config::parse("max_split_size_mb:24,garbage_collection_threshold:0.7").unwrap()),
        Just(Config::parse("expandable_segments:True").unwrap()),
        Just(Config::parse("expandable_segments:True,max_split_size_mb:40").unwrap()),
        Just(Config::parse("expandable_segments:True,garbage_collection_threshold:0.5").unwrap()),
        Just(
            Config::parse("expandable_segments:True,roundup_power2_divisions:[2:8,16:2,>:1]")
                .unwrap()
        ),
    ]
}

enum Handle<'a> {
    Raii(Allocation<'a, SimBackend>),
    Raw,
}

struct Live<'a> {
    dev: usize,
    stream: usize,
    ptr: u64,
    size: u64,
    rounded: u64,
    tag: u64,
    /// Streams recorded with record_stream (indexes).
    used_on: Vec<usize>,
    handle: Handle<'a>,
}

fn write_tag(ptr: u64, size: u64, tag: u64) {
    let bytes = tag.to_le_bytes();
    let n = size.min(8) as usize;
    // SAFETY: the simulated backend's segments are host memory; [ptr, ptr+size) lies inside
    // a live allocation of at least `size` bytes owned by this test.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr as *mut u8, n);
        if size >= 16 {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (ptr + size - 8) as *mut u8, 8);
        }
    }
}

fn check_tag(ptr: u64, size: u64, tag: u64) -> bool {
    let bytes = tag.to_le_bytes();
    let n = size.min(8) as usize;
    let mut head = [0u8; 8];
    let mut tail = [0u8; 8];
    // SAFETY: as in `write_tag`: reading inside a live host-backed allocation.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr as *const u8, head.as_mut_ptr(), n);
        if size >= 16 {
            std::ptr::copy_nonoverlapping((ptr + size - 8) as *const u8, tail.as_mut_ptr(), 8);
        }
    }
    head[..n] == bytes[..n] && (size < 16 || tail == bytes)
}

/// Runs one sequence; returns a description of the first violation.
fn run(config: Config, ops: &[Op]) -> Result<(), String> {
    let backend = SimBackend::with_devices(DEVICES, 512 * MIB);
    let mut streams = [[0u64; STREAMS]; DEVICES];
    for s in streams.iter_mut() {
        for x in s.iter_mut().skip(1) {
            *x = backend.create_stream();
        }
    }
    let alloc = CachingAllocator::new(backend, config.clone()).map_err(|e| e.to_string())?;
    let mut live: Vec<Live<'_>> = Vec::new();
    // Freed blocks whose other-stream work is not known to be complete:
    // (dev, start, end, streams still running).
    let mut pending: Vec<(usize, u64, u64, Vec<usize>)> = Vec::new();
    let mut capacity = [512 * MIB; DEVICES];
    let mut limit = [u64::MAX; DEVICES];
    // Backend alloc call number at which an injected failure fires.
    let mut inject_at: Option<u64> = None;
    let mut next_tag = 1u64;

    for (step, op) in ops.iter().enumerate() {
        let syncs_before: Vec<u64> = (0..DEVICES)
            .map(|d| alloc.memory_stats(d).unwrap().num_sync_all_streams)
            .collect();
        let ctx = |m: String| format!("step {step} {op:?}: {m}");
        match op {
            Op::Alloc {
                dev,
                stream,
                size,
                raw,
            } => {
                let calls_before = alloc.backend().counts().alloc_calls;
                let s = streams[*dev][*stream];
                let res = if *raw {
                    alloc.allocate_raw(*dev, *size, s).map(|p| (p, Handle::Raw))
                } else {
                    alloc
                        .malloc_on(*dev, *size, s)
                        .map(|a| (a.ptr(), Handle::Raii(a)))
                };
                let calls_after = alloc.backend().counts().alloc_calls;
                // The OOM ladder may have waited for every event of the device: then the
                // other streams' work is done and reuse is legitimate.
                if alloc.memory_stats(*dev).unwrap().num_sync_all_streams != syncs_before[*dev] {
                    pending.retain(|p| p.0 != *dev);
                }
                let injected = inject_at.is_some_and(|t| calls_before < t && t <= calls_after);
                if injected {
                    inject_at = None;
                }
                match res {
                    Ok((ptr, handle)) => {
                        let rounded = round_size(*size, &config);
                        for (pd, a, b, running) in &pending {
                            if *pd == *dev && !running.is_empty() && ptr < *b && *a < ptr + rounded
                            {
                                return Err(ctx(format!(
                                    "block {ptr:#x} handed out while streams {running:?} may still use {a:#x}..{b:#x}"
                                )));
                            }
                        }
                        let tag = next_tag;
                        next_tag += 1;
                        write_tag(ptr, *size, tag);
                        live.push(Live {
                            dev: *dev,
                            stream: *stream,
                            ptr,
                            size: *size,
                            rounded,
                            tag,
                            used_on: Vec::new(),
                            handle,
                        });
                    }
                    Err(Error::OutOfMemory(e)) => {
                        let seg = e.segment_size;
                        let room = capacity[*dev].min(limit[*dev]);
                        if e.reserved + seg <= room && !injected {
                            return Err(ctx(format!(
                                "OOM although reserved {} + segment {seg} fits in {room}",
                                e.reserved
                            )));
                        }
                        if e.requested != *size || e.rounded != round_size(*size, &config) {
                            return Err(ctx(format!("OOM report has wrong sizes: {e:?}")));
                        }
                    }
                    Err(Error::Backend(BackendError::Driver { .. })) if injected => {}
                    Err(e) => return Err(ctx(format!("unexpected error {e}"))),
                }
            }
            Op::Free { pick } => {
                if live.is_empty() {
                    continue;
                }
                let l = live.swap_remove(pick % live.len());
                if !check_tag(l.ptr, l.size, l.tag) {
                    return Err(ctx(format!("tag of {:#x} overwritten", l.ptr)));
                }
                let was_raw = matches!(l.handle, Handle::Raw);
                match l.handle {
                    Handle::Raii(a) => a.free().map_err(|e| ctx(e.to_string()))?,
                    Handle::Raw => alloc
                        .free_raw(l.dev, l.ptr)
                        .map_err(|e| ctx(e.to_string()))?,
                }
                let running: Vec<usize> = l
                    .used_on
                    .iter()
                    .copied()
                    .filter(|&s| s != l.stream)
                    .collect();
                if !running.is_empty() {
                    pending.push((l.dev, l.ptr, l.ptr + l.rounded, running));
                }
                // A double free of a raw pointer is refused and changes nothing.
                if was_raw {
                    match alloc.free_raw(l.dev, l.ptr) {
                        Err(Error::UnknownPointer(p)) if p == l.ptr => {}
                        other => return Err(ctx(format!("double free gave {other:?}"))),
                    }
                }
            }
            Op::RecordStream { pick, stream } => {
                if live.is_empty() {
                    continue;
                }
                let n = live.len();
                let l = &mut live[pick % n];
                let s = streams[l.dev][*stream];
                match &l.handle {
                    Handle::Raii(a) => a.record_stream(s),
                    Handle::Raw => alloc
                        .record_stream_raw(l.dev, l.ptr, s)
                        .map_err(|e| ctx(e.to_string()))?,
                }
                if !l.used_on.contains(stream) {
                    l.used_on.push(*stream);
                }
            }
            Op::CompleteStream { dev, stream } => {
                alloc
                    .backend()
                    .complete_stream(*dev, streams[*dev][*stream]);
                for p in pending.iter_mut().filter(|p| p.0 == *dev) {
                    p.3.retain(|s| s != stream);
                }
            }
            Op::CompleteAll => {
                alloc.backend().complete_all();
                pending.clear();
            }
            Op::EmptyCache { dev } => {
                alloc.empty_cache(*dev).map_err(|e| ctx(e.to_string()))?;
                for d in 0..DEVICES {
                    if dev.is_some_and(|x| x != d) {
                        continue;
                    }
                    for seg in alloc.snapshot(d).unwrap() {
                        if seg.blocks.len() == 1
                            && seg.blocks[0].state == cudalloc::policy::BlockState::Free
                        {
                            return Err(ctx(format!(
                                "fully free segment {:#x} survived empty_cache",
                                seg.addr
                            )));
                        }
                    }
                }
            }
            Op::FailNextAlloc { nth, oom } => {
                let err = if *oom {
                    BackendError::OutOfMemory
                } else {
                    BackendError::Driver {
                        code: 999,
                        message: "injected".into(),
                    }
                };
                alloc.backend().fail_nth_alloc(*nth, err);
                inject_at = Some(alloc.backend().counts().alloc_calls + nth);
            }
            Op::SetFraction { dev, fraction } => {
                alloc
                    .set_memory_fraction(*dev, *fraction)
                    .map_err(|e| ctx(e.to_string()))?;
                limit[*dev] = (capacity[*dev] as f64 * fraction) as u64;
            }
            Op::SetCapacity { dev, mib } => {
                alloc.backend().set_capacity(*dev, mib * MIB);
                capacity[*dev] = mib * MIB;
            }
        }
        // Waiting for every event (the OOM ladder) completes the other streams' work.
        for (d, before) in syncs_before.iter().enumerate() {
            if alloc.memory_stats(d).unwrap().num_sync_all_streams != *before {
                pending.retain(|p| p.0 != d);
            }
        }
        check_all(&alloc, &live, &config).map_err(ctx)?;
    }
    for l in live {
        if let Handle::Raw = l.handle {
            alloc.free_raw(l.dev, l.ptr).map_err(|e| e.to_string())?;
        }
    }
    alloc.backend().complete_all();
    alloc.empty_cache(None).map_err(|e| e.to_string())?;
    check_all(&alloc, &[], &config)?;
    if alloc.backend().counts().used != 0 {
        return Err(format!(
            "{} bytes still held after everything was freed and the cache emptied",
            alloc.backend().counts().used
        ));
    }
    Ok(())
}

fn check_all(
    alloc: &CachingAllocator<SimBackend>,
    live: &[Live<'_>],
    config: &Config,
) -> Result<(), String> {
    alloc.check_invariants()?;
    let _ = config;
    for d in 0..DEVICES {
        let mut spans: Vec<(u64, u64)> = live
            .iter()
            .filter(|l| l.dev == d)
            .map(|l| (l.ptr, l.ptr + l.rounded))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(format!(
                    "live blocks {:#x} and {:#x} overlap",
                    w[0].0, w[1].0
                ));
            }
        }
        let st = alloc.memory_stats(d).unwrap();
        let n = spans.len() as i64;
        // Block sizes may exceed the rounded request (an unsplit remainder stays with the
        // block, as in PyTorch): every live allocation sits at the start of an allocated
        // block at least as large, and allocated_bytes is the sum of those blocks.
        let mut blocks = HashMap::new();
        for seg in alloc.snapshot(d).unwrap() {
            for b in seg.blocks {
                if b.state == cudalloc::policy::BlockState::Allocated {
                    blocks.insert(b.addr, b.size);
                }
            }
        }
        let mut bytes = 0;
        for l in live.iter().filter(|l| l.dev == d) {
            match blocks.get(&l.ptr) {
                Some(&size) if size >= l.rounded => bytes += size,
                other => {
                    return Err(format!(
                        "live allocation {:#x} ({} bytes) has block {other:?}",
                        l.ptr, l.rounded
                    ));
                }
            }
        }
        if blocks.len() as i64 != n {
            return Err(format!(
                "device {d}: {} allocated blocks, model {n}",
                blocks.len()
            ));
        }
        if st.blocks.allocation[0].current != n
            || st.blocks.allocated_bytes[0].current != bytes as i64
        {
            return Err(format!(
                "device {d}: stats say {} allocations / {} bytes, model {n} / {bytes}",
                st.blocks.allocation[0].current, st.blocks.allocated_bytes[0].current
            ));
        }
        let requested: u64 = live.iter().filter(|l| l.dev == d).map(|l| l.size).sum();
        if (st.blocks.requested_bytes[0].current as u64) < requested {
            return Err(format!(
                "device {d}: requested_bytes below the live requests"
            ));
        }
        let reserved = st.segments.reserved_bytes[0].current as u64;
        let used: u64 = alloc.backend().segments(d).iter().map(|s| s.1).sum::<u64>()
            + alloc.backend().mapped_pages(d).len() as u64
                * cudalloc::backend::sim::SIM_GRANULARITY;
        if reserved != used {
            return Err(format!(
                "device {d}: reserved {reserved} but the device holds {used}"
            ));
        }
    }
    let mut by_tag = HashMap::new();
    for l in live {
        if by_tag.insert(l.tag, l.ptr).is_some() || !check_tag(l.ptr, l.size, l.tag) {
            return Err(format!("tag of live block {:#x} overwritten", l.ptr));
        }
    }
    Ok(())
}

#[test]
fn model_sequences_keep_every_invariant() {
    let cases: u32 = std::env::var("CUDALLOC_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let strategy = (
        config_strategy(),
        prop::collection::vec(op_strategy(), 1..160),
    );
    let started = std::time::Instant::now();
    runner
        .run(&strategy, |(config, ops)| {
            run(config, &ops).map_err(TestCaseError::fail)
        })
        .unwrap();
    eprintln!(
        "model: {cases} sequences passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
