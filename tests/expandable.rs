//! Expandable segments through the allocator on the simulated backend: growth in place,
//! pages given back, failed maps, and the interplay with max_split_size, garbage collection
//! and the memory fraction.

use cudalloc::backend::sim::SIM_GRANULARITY as G;
use cudalloc::history::Action;
use cudalloc::{BackendError, CachingAllocator, Config, Error, SimBackend};

const MIB: u64 = 1 << 20;

fn alloc(capacity: u64, conf: &str) -> CachingAllocator<SimBackend> {
    let cfg = Config::parse(&format!("expandable_segments:True{conf}")).unwrap();
    CachingAllocator::new(SimBackend::new(capacity), cfg).unwrap()
}

#[test]
fn grows_in_place_and_reserves_what_is_mapped() {
    let a = alloc(1 << 30, "");
    a.record_history(true, 1000);
    let x = a.malloc(3 * MIB, 0).unwrap();
    let y = a.malloc(5 * MIB, 0).unwrap();
    // One address range, grown page by page: y follows x directly.
    assert_eq!(y.ptr(), x.ptr() + 3 * MIB);
    let st = a.memory_stats(0).unwrap();
    assert_eq!(st.segments.segment[0].current, 1);
    assert_eq!(st.segments.reserved_bytes[0].current as u64, 8 * MIB);
    assert_eq!(a.backend().counts().used, 8 * MIB);
    // SAFETY: host-backed pages of a live allocation.
    unsafe { std::ptr::write_bytes(y.ptr() as *mut u8, 1, (5 * MIB) as usize) };
    drop(x);
    drop(y);
    a.empty_cache(None).unwrap();
    assert_eq!(a.backend().counts().used, 0, "every page given back");
    assert_eq!(a.memory_stats(0).unwrap().segments.segment[0].current, 0);
    a.check_invariants().unwrap();
    let actions: Vec<Action> = a.history(0).unwrap().iter().map(|e| e.action).collect();
    assert!(actions.contains(&Action::SegmentMap));
    assert!(actions.contains(&Action::SegmentUnmap));
}

#[test]
fn a_failed_map_leaves_the_segment_usable() {
    let a = alloc(1 << 30, "");
    let x = a.malloc(3 * MIB, 0).unwrap();
    for err in [
        BackendError::Driver {
            code: 2,
            message: "injected".into(),
        },
        BackendError::OutOfMemory,
    ] {
        a.backend().fail_nth_map(1, err.clone());
        let r = a.malloc(7 * MIB, 0);
        match err {
            BackendError::OutOfMemory => {
                // Retried after releasing cache: the next map succeeds.
                assert!(r.is_ok(), "{r:?}");
            }
            _ => assert!(matches!(r, Err(Error::Backend(_))), "{r:?}"),
        }
        drop(r);
        a.check_invariants().unwrap();
        // The segment keeps working.
        let y = a.malloc(6 * MIB, 0).unwrap();
        assert!(y.ptr() >= x.ptr());
        drop(y);
        a.check_invariants().unwrap();
    }
    drop(x);
}

#[test]
fn memory_fraction_limits_mapped_pages() {
    let a = alloc(100 * MIB, "");
    a.set_memory_fraction(0, 0.5).unwrap();
    let x = a.malloc(30 * MIB, 0).unwrap();
    match a.malloc(30 * MIB, 0) {
        Err(Error::OutOfMemory(e)) => assert_eq!(e.limit, Some(50 * MIB)),
        other => panic!("expected OOM, got {other:?}"),
    }
    assert!(a.reserved_bytes(0) <= 50 * MIB);
    drop(x);
    // The freed pages are reused (or given back and mapped again) within the limit.
    let y = a.malloc(45 * MIB, 0).unwrap();
    drop(y);
    a.check_invariants().unwrap();
}

#[test]
fn out_of_memory_gives_back_free_pages_of_other_streams() {
    let backend = SimBackend::new(64 * MIB);
    let s1 = backend.create_stream();
    let s2 = backend.create_stream();
    let cfg = Config::parse("expandable_segments:True").unwrap();
    let a = CachingAllocator::new(backend, cfg).unwrap();
    drop(a.malloc(50 * MIB, s1).unwrap()); // 50 MiB mapped, free, on s1
    let y = a.malloc(40 * MIB, s2).unwrap(); // needs s1's pages back
    // s2's growth takes them itself (it would go beyond the device's high-water mark):
    // no out-of-memory retry is needed.
    assert_eq!(a.memory_stats(0).unwrap().num_alloc_retries, 0);
    // At most one page above the high-water mark (50 MiB).
    assert_eq!(a.reserved_bytes(0), 52 * MIB);
    assert!(a.backend().counts().used <= 64 * MIB);
    drop(y);
    a.check_invariants().unwrap();
}

#[test]
fn max_split_size_and_garbage_collection_with_expandable_segments() {
    // max_split_size_mb does not keep blocks of expandable segments whole: their free pages
    // go back instead.
    let a = alloc(1 << 30, ",max_split_size_mb:40");
    let x = a.malloc(64 * MIB, 0).unwrap();
    let base = x.ptr();
    drop(x);
    let y = a.malloc(30 * MIB, 0).unwrap();
    assert_eq!(y.ptr(), base, "the small request reuses the freed pages");
    drop(y);
    a.check_invariants().unwrap();

    // Garbage collection over the threshold unmaps free pages.
    let a = alloc(100 * MIB, ",garbage_collection_threshold:0.5");
    a.set_memory_fraction(0, 1.0).unwrap();
    let keep = a.malloc(20 * MIB, 0).unwrap();
    drop(a.malloc(40 * MIB, 0).unwrap()); // 60 MiB mapped, 40 free
    let s = a.backend().create_stream();
    let z = a.malloc(10 * MIB, s).unwrap(); // other stream: GC runs first
    assert!(
        a.reserved_bytes(0) <= 30 * MIB + G,
        "{}",
        a.reserved_bytes(0)
    );
    drop((keep, z));
    a.check_invariants().unwrap();
}

#[test]
fn snapshot_reports_mapped_runs_as_expandable_segments() {
    let a = alloc(1 << 30, "");
    let x = a.malloc(5 * MIB, 0).unwrap();
    let segs = a.snapshot(0).unwrap();
    assert_eq!(segs.len(), 1);
    assert!(segs[0].expandable);
    assert_eq!(segs[0].size, 6 * MIB);
    drop(x);
}

#[test]
fn a_small_block_on_a_large_pool_page_counts_there_and_goes_back_there() {
    let a = alloc(1 << 30, "");
    // 3 MiB on two large-pool pages: 1 MiB of the second page is free.
    let big = a.malloc(3 * MIB, 0).unwrap();
    // A small request would need a small-pool page; the free MiB already mapped serves it.
    let small = a.malloc(512 * 1024, 0).unwrap();
    assert_eq!(small.ptr(), big.ptr() + 3 * MIB);
    let st = a.memory_stats(0).unwrap();
    assert_eq!(
        st.segments.reserved_bytes[0].current as u64,
        4 * MIB,
        "no new page"
    );
    assert_eq!(st.blocks.allocated_bytes[1].current, 0, "small pool");
    assert_eq!(
        st.blocks.allocated_bytes[2].current as u64,
        3 * MIB + 512 * 1024,
        "large pool"
    );
    let segs = a.snapshot(0).unwrap();
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].blocks.len(), 3);
    a.check_invariants().unwrap();
    drop(big);
    drop(small);
    a.check_invariants().unwrap();
    assert_eq!(
        a.memory_stats(0).unwrap().blocks.allocated_bytes[0].current,
        0
    );
    a.empty_cache(None).unwrap();
    assert_eq!(a.backend().counts().used, 0, "every page given back");
    a.check_invariants().unwrap();
}

#[test]
fn a_request_beyond_the_device_reserves_no_address_range() {
    // Found by tests/mutation.rs: a mutated trace asked for 127 TiB, and the expandable
    // segment's address range was sized to it (seconds per attempt in the simulator).
    let a = CachingAllocator::new(SimBackend::new(64 * MIB), Config::default()).unwrap();
    let e = a.malloc(1 << 47, 0).unwrap_err();
    assert!(matches!(e, cudalloc::Error::OutOfMemory(_)), "{e}");
    assert_eq!(a.backend().counts().reserve_range, 0);
    drop(a.malloc(MIB, 0).unwrap());
    let e = a.malloc(1 << 47, 0).unwrap_err();
    assert!(matches!(e, cudalloc::Error::OutOfMemory(_)), "{e}");
    assert_eq!(a.backend().counts().reserve_range, 1);
    a.check_invariants().unwrap();
}

/// By default a large-pool request below 10 MiB maps 20 MiB (PyTorch's segment size for
/// such requests): the next requests come from the pages already mapped, without a driver
/// call. `expandable_segments:True` maps exactly the pages needed, and
/// `expandable_min_map_mb` sets the step either way.
#[test]
fn large_requests_below_10_mib_map_20_mib_by_default() {
    let maps = |conf: &str| {
        let cfg = Config::parse(conf).unwrap();
        let a = CachingAllocator::new(SimBackend::new(1 << 30), cfg).unwrap();
        let held: Vec<_> = (0..4).map(|_| a.malloc(3 * MIB, 0).unwrap()).collect();
        let st = a.memory_stats(0).unwrap();
        let reserved = st.segments.reserved_bytes[0].current as u64;
        drop(held);
        a.check_invariants().unwrap();
        (st.num_device_alloc, reserved)
    };
    assert_eq!(
        maps(""),
        (1, 20 * MIB),
        "one map of 20 MiB serves four 3 MiB requests"
    );
    assert_eq!(maps("expandable_segments:True"), (4, 12 * MIB));
    assert_eq!(maps("expandable_min_map_mb:8"), (2, 16 * MIB));
    assert_eq!(
        maps("expandable_segments:True,expandable_min_map_mb:20"),
        (1, 20 * MIB)
    );
    // Requests of 10 MiB and more map what they need, as before.
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default()).unwrap();
    let x = a.malloc(12 * MIB, 0).unwrap();
    assert_eq!(a.reserved_bytes(0), 12 * MIB);
    drop(x);
}

/// Where the device has no room for the wider map, the request still gets the pages it
/// needs.
#[test]
fn the_wider_map_gives_way_near_the_device_limit() {
    let a = CachingAllocator::new(SimBackend::new(10 * MIB), Config::default()).unwrap();
    let x = a.malloc(3 * MIB, 0).unwrap();
    assert_eq!(a.reserved_bytes(0), 4 * MIB, "20 MiB do not fit: two pages");
    let y = a.malloc(5 * MIB, 0).unwrap();
    assert!(a.reserved_bytes(0) <= 10 * MIB);
    assert_eq!(a.memory_stats(0).unwrap().num_alloc_retries, 0);
    drop((x, y));
    a.check_invariants().unwrap();
    // The memory fraction is a limit the same way.
    let a = CachingAllocator::new(SimBackend::new(1 << 30), Config::default()).unwrap();
    a.set_memory_fraction(0, 8.0 * MIB as f64 / (1u64 << 30) as f64)
        .unwrap();
    let x = a.malloc(3 * MIB, 0).unwrap();
    assert_eq!(a.reserved_bytes(0), 4 * MIB);
    drop(x);
}
