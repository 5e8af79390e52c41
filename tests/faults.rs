//! Fault injection and the out-of-memory ladder.

use cudalloc::{BackendError, CachingAllocator, Config, Error, SimBackend};

const MIB: u64 = 1 << 20;

fn workload(alloc: &CachingAllocator<SimBackend>) -> Vec<Result<(), String>> {
    let sizes = [
        1000,
        3 * MIB,
        25 * MIB,
        512,
        12 * MIB,
        700_000,
        40 * MIB,
        2 * MIB,
    ];
    let mut out = Vec::new();
    let mut keep = Vec::new();
    for (i, &s) in sizes.iter().cycle().take(40).enumerate() {
        match alloc.malloc(s, 0) {
            Ok(a) => {
                if i % 3 == 0 {
                    keep.push(a);
                }
                out.push(Ok(()));
            }
            Err(e) => out.push(Err(e.to_string())),
        }
        if i % 11 == 0 {
            keep.clear();
            let _ = alloc.empty_cache(None);
        }
    }
    out
}

#[test]
fn a_failing_segment_allocation_at_any_point_leaves_the_allocator_usable() {
    let clean = SimBackend::new(1 << 30);
    let a = CachingAllocator::new(clean, Config::fixed_segments()).unwrap();
    workload(&a);
    let calls = a.backend().counts().alloc_calls;
    assert!(calls > 5);
    for oom in [true, false] {
        for n in 1..=calls {
            let backend = SimBackend::new(1 << 30);
            let err = if oom {
                BackendError::OutOfMemory
            } else {
                BackendError::Driver {
                    code: 700,
                    message: "injected".into(),
                }
            };
            backend.fail_nth_alloc(n, err);
            let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
            let results = workload(&alloc);
            let failures = results.iter().filter(|r| r.is_err()).count();
            if oom {
                // A single refused segment is absorbed by the release-and-retry ladder.
                assert_eq!(failures, 0, "n={n}: {results:?}");
            } else {
                assert_eq!(
                    failures, 1,
                    "n={n}: a driver error is reported, not retried"
                );
            }
            alloc.check_invariants().unwrap();
            // Still usable.
            drop(alloc.malloc(5 * MIB, 0).unwrap());
            alloc.empty_cache(None).unwrap();
            assert_eq!(alloc.backend().counts().used, 0);
        }
    }
}

#[test]
fn oom_releases_cache_and_retries() {
    let alloc =
        CachingAllocator::new(SimBackend::new(100 * MIB), Config::fixed_segments()).unwrap();
    // Fill with five 20 MiB segments, then free them: they stay cached.
    let v: Vec<_> = (0..5).map(|_| alloc.malloc(20 * MIB, 0).unwrap()).collect();
    drop(v);
    assert_eq!(alloc.reserved_bytes(0), 100 * MIB);
    // 60 MiB fits in no cached block; the cache is released and the call retried.
    let big = alloc.malloc(60 * MIB, 0).unwrap();
    let st = alloc.memory_stats(0).unwrap();
    assert_eq!(st.num_alloc_retries, 1);
    assert_eq!(st.num_ooms, 0);
    assert_eq!(alloc.reserved_bytes(0), 60 * MIB);
    drop(big);
    alloc.check_invariants().unwrap();
}

#[test]
fn true_oom_reports_every_figure_and_names_fragmentation() {
    let alloc = CachingAllocator::new(SimBackend::new(60 * MIB), Config::fixed_segments()).unwrap();
    // Three 20 MiB segments, each holding two 9 MiB blocks (and 2 MiB free).
    let mut all: Vec<_> = (0..6).map(|_| alloc.malloc(9 * MIB, 0).unwrap()).collect();
    assert_eq!(alloc.reserved_bytes(0), 60 * MIB);
    // Free every second one: each segment is now [9 MiB live][11 MiB free].
    let keep: Vec<_> = all.drain(..).step_by(2).collect();
    let e = match alloc.malloc(14 * MIB, 0) {
        Err(Error::OutOfMemory(e)) => e,
        other => panic!("expected OOM, got {other:?}"),
    };
    assert_eq!(e.requested, 14 * MIB);
    assert_eq!(e.rounded, 14 * MIB);
    assert_eq!(e.reserved, 60 * MIB);
    assert_eq!(e.allocated, 27 * MIB);
    assert_eq!(e.reserved_free, 33 * MIB);
    assert_eq!(e.largest_free_block, 11 * MIB);
    assert_eq!(e.device_total, 60 * MIB);
    assert_eq!(e.limit, None);
    assert!(e.is_fragmentation());
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("CUDA out of memory. Tried to allocate 14.00 MiB"),
        "{msg}"
    );
    assert!(msg.contains("fragmentation"), "{msg}");
    assert!(msg.contains("expandable_segments:True"), "{msg}");
    assert!(msg.contains("max_split_size_mb"), "{msg}");
    let st = alloc.memory_stats(0).unwrap();
    assert_eq!(st.num_ooms, 1);
    assert_eq!(st.num_alloc_retries, 1);
    assert_eq!(st.num_sync_all_streams, 1);
    drop(keep);
    alloc.check_invariants().unwrap();
    // Usable afterwards.
    drop(alloc.malloc(14 * MIB, 0).unwrap());
}

#[test]
fn memory_fraction_limits_reserved_and_is_reported() {
    let alloc =
        CachingAllocator::new(SimBackend::new(1000 * MIB), Config::fixed_segments()).unwrap();
    alloc.set_memory_fraction(0, 0.1).unwrap();
    let a = alloc.malloc(60 * MIB, 0).unwrap();
    let e = match alloc.malloc(60 * MIB, 0) {
        Err(Error::OutOfMemory(e)) => e,
        other => panic!("expected OOM, got {other:?}"),
    };
    assert_eq!(e.limit, Some(100 * MIB));
    assert!(e.to_string().contains("limited to 100.00 MiB"), "{e}");
    assert!(alloc.reserved_bytes(0) <= 100 * MIB);
    assert!(alloc.set_memory_fraction(0, 1.5).is_err());
    assert!(alloc.set_memory_fraction(3, 0.5).is_err());
    drop(a);
}

#[test]
fn bad_inputs_are_errors_and_change_nothing() {
    let alloc = CachingAllocator::new(SimBackend::new(1 << 30), Config::fixed_segments()).unwrap();
    let p = alloc.allocate_raw(0, 4096, 0).unwrap();
    let before = alloc.memory_stats(0).unwrap();
    assert!(matches!(
        alloc.free_raw(0, p + 512),
        Err(Error::UnknownPointer(_))
    ));
    assert!(matches!(
        alloc.free_raw(0, 0xdead_0000),
        Err(Error::UnknownPointer(_))
    ));
    assert!(matches!(alloc.malloc(0, 0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        alloc.malloc(u64::MAX, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        alloc.malloc_on(7, 100, 0),
        Err(Error::InvalidDevice {
            device: 7,
            count: 1
        })
    ));
    assert!(matches!(
        alloc.free_raw(7, p),
        Err(Error::InvalidDevice { device: 7, .. })
    ));
    assert!(matches!(
        alloc.record_stream_raw(0, 0x1234, 5),
        Err(Error::UnknownPointer(_))
    ));
    assert_eq!(alloc.memory_stats(0).unwrap(), before);
    alloc.free_raw(0, p).unwrap();
    assert!(matches!(
        alloc.free_raw(0, p),
        Err(Error::UnknownPointer(_))
    ));
    alloc.check_invariants().unwrap();
}

#[test]
fn oom_ladder_waits_for_outstanding_events() {
    let backend = SimBackend::new(40 * MIB);
    let s1 = backend.create_stream();
    let s2 = backend.create_stream();
    let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
    let a = alloc.malloc(20 * MIB, s1).unwrap();
    a.record_stream(s2);
    drop(a); // pending on s2's event
    let b = alloc.malloc(20 * MIB, s1).unwrap(); // second segment
    // The device is full; only the pending block could serve this, once s2's work is done:
    // the ladder waits for every outstanding event, then reuses it.
    let c = alloc.malloc(20 * MIB, s1).unwrap();
    let st = alloc.memory_stats(0).unwrap();
    assert_eq!(st.num_sync_all_streams, 1);
    assert_eq!(st.num_ooms, 0);
    assert_eq!(alloc.backend().counts().synchronize_event, 1);
    drop((b, c));
    alloc.check_invariants().unwrap();
}

#[test]
fn expandable_segments_need_virtual_memory_from_the_backend() {
    let cfg = Config::parse("expandable_segments:True").unwrap();
    let e = CachingAllocator::new(Faulty::new(), cfg).unwrap_err();
    assert!(e.to_string().contains("virtual memory"), "{e}");
}

#[test]
fn by_default_a_backend_without_virtual_memory_gets_fixed_segments() {
    let alloc = CachingAllocator::new(Faulty::new(), Config::default()).unwrap();
    assert!(!alloc.config().expandable_segments);
    assert_eq!(alloc.config().to_string(), "expandable_segments:False");
    let p = alloc.malloc(3 << 20, 0).unwrap();
    assert_eq!(alloc.memory_stats(0).unwrap().num_device_alloc, 1);
    drop(p);
}

#[test]
fn an_event_error_while_releasing_cache_loses_no_segment() {
    // Whatever position the failing stream has among the others, every fully free segment
    // of the other streams still goes back to the driver and the accounting stays exact.
    for bad in 1..=5u64 {
        let backend = Faulty {
            fail_queries_on: Some(100),
            ..Faulty::new()
        };
        let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
        for s in 1..=5u64 {
            let a = alloc.malloc(3 * MIB, s).unwrap();
            if s == bad {
                a.record_stream(100); // its event will fail to query
            }
        }
        let r = alloc.empty_cache(None);
        assert!(r.is_err(), "the query failure is reported");
        alloc.check_invariants().unwrap();
        // Four segments released, the pending one kept.
        assert_eq!(alloc.reserved_bytes(0), 20 * MIB, "bad stream {bad}");
        assert_eq!(alloc.backend().sim.counts().used, 20 * MIB);
    }
}

#[test]
fn a_block_whose_other_stream_cannot_be_tracked_is_never_reused() {
    // A context that has gone bad: events cannot be recorded, the device not synchronized.
    let backend = Faulty {
        fail_record_and_sync: true,
        ..Faulty::new()
    };
    let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
    let a = alloc.malloc(MIB, 1).unwrap();
    let addr = a.ptr();
    a.record_stream(2);
    assert!(a.free().is_err(), "the failure is reported");
    alloc.check_invariants().unwrap();
    for _ in 0..4 {
        let b = alloc.malloc(MIB, 1).unwrap();
        assert_ne!(b.ptr(), addr, "reused although stream 2 may still use it");
        std::mem::forget(b); // keep them live: each takes the next free block
    }
    let st = alloc.memory_stats(0).unwrap();
    assert_eq!(st.blocks.allocation[0].current, 4);
    assert_eq!(
        st.blocks.active[0].current, 5,
        "the quarantined block stays active"
    );
    alloc.check_invariants().unwrap();
}

#[test]
fn a_quarantined_block_stays_out_when_its_recorded_events_complete() {
    // Used on two other streams: the event records on one, fails on the other, and the
    // device cannot be synchronized either. The recorded event completing must not bring the
    // block back: nothing says the second stream is done with it.
    let backend = Faulty {
        fail_record_on: Some(3),
        fail_sync: true,
        ..Faulty::new()
    };
    let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
    let a = alloc.malloc(MIB, 1).unwrap();
    let addr = a.ptr();
    a.record_stream(2);
    a.record_stream(3);
    assert!(a.free().is_err(), "the failure is reported");
    alloc.check_invariants().unwrap();
    alloc.backend().sim.complete_all();
    // Completed events are processed by allocations and by empty_cache.
    let _ = alloc.empty_cache(None);
    alloc.check_invariants().unwrap();
    for _ in 0..4 {
        let b = alloc.malloc(MIB, 1).unwrap();
        assert_ne!(b.ptr(), addr, "reused although stream 3 may still use it");
        std::mem::forget(b);
    }
    let st = alloc.memory_stats(0).unwrap();
    assert_eq!(
        st.blocks.active[0].current, 5,
        "the quarantined block stays active"
    );
    alloc.check_invariants().unwrap();
}

#[test]
fn close_reports_what_drop_cannot() {
    let backend = Faulty {
        fail_free: true,
        ..Faulty::new()
    };
    let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
    drop(alloc.malloc(3 * MIB, 0).unwrap());
    drop(alloc.malloc(MIB / 2, 0).unwrap());
    let e = alloc.close().expect_err("the driver's free failed");
    assert!(e.to_string().contains("injected free failure"), "{e}");
    // With a driver that frees, close gives everything back without an error.
    let alloc = CachingAllocator::new(Faulty::new(), Config::fixed_segments()).unwrap();
    drop(alloc.malloc(3 * MIB, 0).unwrap());
    alloc.close().unwrap();
}

/// The simulator behind a backend that fails on demand, with no virtual-memory support.
struct Faulty {
    sim: SimBackend,
    /// Events recorded on this stream fail `query_event`.
    fail_queries_on: Option<u64>,
    /// `record_event` and `synchronize_device` fail.
    fail_record_and_sync: bool,
    /// `record_event` fails on this stream only.
    fail_record_on: Option<u64>,
    /// `synchronize_device` fails.
    fail_sync: bool,
    /// `free_segment` fails.
    fail_free: bool,
    event_streams: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

impl Faulty {
    fn new() -> Faulty {
        Faulty {
            sim: SimBackend::new(1 << 30),
            fail_queries_on: None,
            fail_record_and_sync: false,
            fail_record_on: None,
            fail_sync: false,
            fail_free: false,
            event_streams: Default::default(),
        }
    }
}

fn injected(what: &str) -> BackendError {
    BackendError::Driver {
        code: 999,
        message: format!("injected {what} failure"),
    }
}

// The virtual-memory methods keep the trait's defaults: unsupported.
impl cudalloc::Backend for Faulty {
    fn device_count(&self) -> usize {
        self.sim.device_count()
    }
    fn alloc_segment(&self, d: usize, s: u64) -> Result<u64, BackendError> {
        self.sim.alloc_segment(d, s)
    }
    fn free_segment(&self, d: usize, a: u64, s: u64) -> Result<(), BackendError> {
        if self.fail_free {
            return Err(injected("free"));
        }
        self.sim.free_segment(d, a, s)
    }
    fn mem_info(&self, d: usize) -> Result<cudalloc::MemInfo, BackendError> {
        self.sim.mem_info(d)
    }
    fn record_event(&self, d: usize, s: u64) -> Result<u64, BackendError> {
        if self.fail_record_and_sync || self.fail_record_on == Some(s) {
            return Err(injected("record"));
        }
        let e = self.sim.record_event(d, s)?;
        self.event_streams.lock().unwrap().insert(e, s);
        Ok(e)
    }
    fn query_event(&self, d: usize, e: u64) -> Result<bool, BackendError> {
        let s = self.event_streams.lock().unwrap().get(&e).copied();
        if s.is_some() && s == self.fail_queries_on {
            return Err(injected("query"));
        }
        self.sim.query_event(d, e)
    }
    fn synchronize_event(&self, d: usize, e: u64) -> Result<(), BackendError> {
        self.sim.synchronize_event(d, e)
    }
    fn release_event(&self, d: usize, e: u64) {
        self.sim.release_event(d, e)
    }
    fn synchronize_device(&self, d: usize) -> Result<(), BackendError> {
        if self.fail_record_and_sync || self.fail_sync {
            return Err(injected("sync"));
        }
        self.sim.synchronize_device(d)
    }
}
