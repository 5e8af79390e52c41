//! `CudaBackend` and the allocator over it, against the stand-in `libcuda.so.1`
//! (`ffi/standin/cuda.c`: counted calls, memory a client may write through). Each body runs
//! in a child process so that the dynamic loader finds the stand-in.

mod common;

use common::{assert_in_child, run_child_with_standin, standin_count};
use cudalloc::backend::{Backend, CudaBackend, cuda::driver_available};
use cudalloc::{BackendError, CachingAllocator, Config, Error};

const MIB: u64 = 1 << 20;

#[test]
fn backend_over_standin_driver() {
    run_child_with_standin(
        "child_backend",
        &[
            ("CUDALLOC_STANDIN_CAPACITY", "104857600"),
            ("CUDALLOC_STANDIN_DEVICES", "2"),
        ],
    );
}

#[test]
#[ignore = "runs in a child process started by backend_over_standin_driver"]
fn child_backend() {
    assert_in_child();
    assert!(driver_available());
    let b = CudaBackend::new().expect("stand-in driver loads");
    assert_eq!(b.device_count(), 2);
    let info = b.mem_info(0).unwrap();
    assert_eq!(info.total, 100 * MIB);
    assert_eq!(info.free, 100 * MIB);
    let p = b.alloc_segment(0, 20 * MIB).unwrap();
    assert_ne!(p, 0);
    // The memory is real (host) memory in the fake: write through it.
    // SAFETY: the stand-in driver backs device pointers with host allocations of that size.
    unsafe { std::ptr::write_bytes(p as *mut u8, 0xAB, (20 * MIB) as usize) };
    assert_eq!(b.mem_info(0).unwrap().free, 80 * MIB);
    assert_eq!(
        b.mem_info(1).unwrap().free,
        100 * MIB,
        "devices are separate"
    );
    // Out of memory is its own error.
    assert_eq!(b.alloc_segment(0, 90 * MIB), Err(BackendError::OutOfMemory));
    // Anything else is a driver error with the driver's name for it.
    match b.free_segment(0, 0xdead_beef, 1) {
        Err(BackendError::Driver { code, message }) => {
            assert_eq!(code, 1);
            assert!(message.contains("CUDA_ERROR_INVALID_VALUE"), "{message}");
        }
        other => panic!("expected a driver error, got {other:?}"),
    }
    assert!(matches!(b.mem_info(5), Err(BackendError::Driver { .. })));
    b.free_segment(0, p, 20 * MIB).unwrap();
    assert_eq!(b.mem_info(0).unwrap().free, 100 * MIB);
    // Events go through the driver and are pooled.
    let e1 = b.record_event(0, 0).unwrap();
    assert!(b.query_event(0, e1).unwrap());
    b.synchronize_event(0, e1).unwrap();
    b.release_event(0, e1);
    let e2 = b.record_event(0, 0).unwrap();
    assert_eq!(e1, e2, "released events are reused");
    b.release_event(0, e2);
    assert_eq!(standin_count("cuEventCreate"), 1);
    assert_eq!(standin_count("cuEventRecord"), 2);
    assert_eq!(standin_count("cuEventQuery"), 1);
    assert_eq!(standin_count("cuEventSynchronize"), 1);
    b.synchronize_device(1).unwrap();
    assert_eq!(standin_count("cuCtxSynchronize"), 1);
    // The caller's current context is left as it was (none here).
    assert_eq!(standin_count("cuDevicePrimaryCtxRetain"), 2);
    drop(b);
    assert_eq!(standin_count("cuEventDestroy"), 1);
    assert_eq!(standin_count("cuDevicePrimaryCtxRelease"), 2);
}

#[test]
fn statuses_unknown_to_the_bindings_are_reported() {
    run_child_with_standin(
        "child_unknown_status",
        &[("CUDALLOC_STANDIN_UNKNOWN_FREE_STATUS", "12345")],
    );
}

#[test]
#[ignore = "runs in a child process started by statuses_unknown_to_the_bindings_are_reported"]
fn child_unknown_status() {
    assert_in_child();
    let b = CudaBackend::new().unwrap();
    // A status no CUresult variant names (a newer driver's): an error with that code.
    match b.free_segment(0, 0xdead_0000, 1) {
        Err(BackendError::Driver { code, message }) => {
            assert_eq!(code, 12345);
            assert!(message.contains("12345"), "{message}");
        }
        other => panic!("expected a driver error, got {other:?}"),
    }
}

#[test]
fn virtual_memory_over_standin_driver() {
    run_child_with_standin("child_vmm", &[("CUDALLOC_STANDIN_CAPACITY", "16777216")]);
}

#[test]
#[ignore = "runs in a child process started by virtual_memory_over_standin_driver"]
fn child_vmm() {
    assert_in_child();
    let b = CudaBackend::new().unwrap();
    let g = b.vmm_granularity(0).unwrap();
    assert_eq!(g, 2 * MIB);
    let r = b.reserve_range(0, 32 * MIB).unwrap();
    assert_eq!(r % g, 0);
    b.map_pages(0, r, 6 * MIB).unwrap();
    // SAFETY: the fake maps the pages read-write in host memory.
    unsafe { std::ptr::write_bytes(r as *mut u8, 3, (6 * MIB) as usize) };
    assert_eq!(
        standin_count("cuMemCreate"),
        3,
        "one physical allocation per page"
    );
    assert_eq!(standin_count("cuMemMap"), 3);
    assert_eq!(standin_count("cuMemSetAccess"), 1);
    assert_eq!(b.mem_info(0).unwrap().free, 10 * MIB);
    // 16 MiB capacity: 6 mapped, 12 more cannot all be backed; nothing stays mapped.
    assert_eq!(
        b.map_pages(0, r + 6 * MIB, 12 * MIB),
        Err(BackendError::OutOfMemory)
    );
    assert_eq!(
        b.mem_info(0).unwrap().free,
        10 * MIB,
        "the partial map was undone"
    );
    // Unmap one page in the middle, then the rest.
    b.unmap_pages(0, r + 2 * MIB, 2 * MIB).unwrap();
    assert_eq!(b.mem_info(0).unwrap().free, 12 * MIB);
    b.unmap_pages(0, r, 2 * MIB).unwrap();
    b.unmap_pages(0, r + 4 * MIB, 2 * MIB).unwrap();
    b.free_range(0, r, 32 * MIB).unwrap();
    assert_eq!(b.mem_info(0).unwrap().free, 16 * MIB);
    // 3 + 5 pages were created (the 6th cuMemCreate of the failed map ran out of memory),
    // and every one was released.
    assert_eq!(standin_count("cuMemCreate"), 9);
    assert_eq!(standin_count("cuMemRelease"), 8);
    assert_eq!(standin_count("cuMemAddressFree"), 1);
}

#[test]
fn expandable_allocator_over_standin_driver() {
    run_child_with_standin(
        "child_expandable",
        &[("CUDALLOC_STANDIN_CAPACITY", "104857600")],
    );
}

#[test]
#[ignore = "runs in a child process started by expandable_allocator_over_standin_driver"]
fn child_expandable() {
    assert_in_child();
    let cfg = Config::parse("expandable_segments:True").unwrap();
    let alloc = CachingAllocator::new(CudaBackend::new().unwrap(), cfg).unwrap();
    let a = alloc.malloc(3 * MIB, 0).unwrap();
    let b = alloc.malloc(5 * MIB, 0).unwrap();
    assert_eq!(b.ptr(), a.ptr() + 3 * MIB, "grown in place");
    // SAFETY: the fake backs mapped pages with host memory.
    unsafe { std::ptr::write_bytes(b.ptr() as *mut u8, 9, (5 * MIB) as usize) };
    assert_eq!(standin_count("cuMemAddressReserve"), 1);
    assert_eq!(standin_count("cuMemCreate"), 4);
    assert_eq!(standin_count("cuMemAlloc"), 0);
    drop((a, b));
    alloc.empty_cache(None).unwrap();
    assert!(standin_count("cuMemUnmap") >= 1);
    assert_eq!(standin_count("cuMemRelease"), 4);
    assert_eq!(standin_count("cuMemAddressFree"), 1);
    let info = alloc.backend().mem_info(0).unwrap();
    assert_eq!(info.free, info.total);
    alloc.check_invariants().unwrap();
}

#[test]
fn allocator_over_standin_driver() {
    run_child_with_standin(
        "child_allocator",
        &[("CUDALLOC_STANDIN_CAPACITY", "104857600")],
    );
}

#[test]
#[ignore = "runs in a child process started by allocator_over_standin_driver"]
fn child_allocator() {
    assert_in_child();
    let alloc =
        CachingAllocator::new(CudaBackend::new().unwrap(), Config::fixed_segments()).unwrap();
    // N malloc/free pairs of one size cost one cuMemAlloc.
    for _ in 0..1000 {
        let a = alloc.malloc(3 * MIB, 0).unwrap();
        // SAFETY: host-backed in the fake; 3 MiB belong to this allocation.
        unsafe { std::ptr::write_bytes(a.ptr() as *mut u8, 7, (3 * MIB) as usize) };
    }
    assert_eq!(standin_count("cuMemAlloc"), 1);
    assert_eq!(alloc.memory_stats(0).unwrap().num_device_alloc, 1);

    // Out of memory from the driver: cached segments are released and the call retried.
    let held: Vec<_> = (0..4).map(|_| alloc.malloc(20 * MIB, 0).unwrap()).collect();
    drop(held); // the first 20 MiB segment is reused, then 3 more: 80 MiB cached
    assert_eq!(alloc.reserved_bytes(0), 80 * MIB);
    let frees_before = standin_count("cuMemFree");
    let big = alloc.malloc(70 * MIB, 0).unwrap();
    assert!(standin_count("cuMemFree") > frees_before, "cache released");
    let st = alloc.memory_stats(0).unwrap();
    assert_eq!(st.num_alloc_retries, 1);
    assert_eq!(st.num_ooms, 0);
    drop(big);

    // Events of record_stream go through the driver.
    let s = 0x1234usize as u64; // the fake accepts any stream handle
    let a = alloc.malloc(MIB, 0).unwrap();
    a.record_stream(s);
    let records = standin_count("cuEventRecord");
    drop(a);
    assert_eq!(standin_count("cuEventRecord"), records + 1);
    let b = alloc.malloc(MIB, 0).unwrap(); // polls the event (complete in the fake)
    assert!(standin_count("cuEventQuery") >= 1);
    drop(b);

    // A true OOM is reported with the driver's figures.
    match alloc.malloc(200 * MIB, 0) {
        Err(Error::OutOfMemory(e)) => {
            assert_eq!(e.device_total, 100 * MIB);
            assert_eq!(e.requested, 200 * MIB);
        }
        other => panic!("expected OOM, got {other:?}"),
    }
    alloc.check_invariants().unwrap();
    alloc.empty_cache(None).unwrap();
    assert_eq!(alloc.reserved_bytes(0), 0);
    let st = alloc.memory_stats(0).unwrap();
    assert_eq!(st.num_device_alloc, st.num_device_free);
    // Every successful cuMemAlloc was matched by a cuMemFree (the others failed with OOM).
    assert_eq!(standin_count("cuMemFree") as u64, st.num_device_free);
    let info = alloc.backend().mem_info(0).unwrap();
    assert_eq!(info.free, info.total, "the stand-in driver holds nothing");
}

#[test]
fn no_driver_is_an_error_not_a_panic() {
    // This process has no libcuda on its library path (CI and dev machines have no GPU);
    // where a real driver exists, the check is meaningless and skipped.
    if driver_available() {
        eprintln!("a CUDA driver is installed here: skipping the no-driver check");
        return;
    }
    match CudaBackend::new() {
        Err(BackendError::Driver { message, .. }) => {
            assert!(message.contains("libcuda"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}
