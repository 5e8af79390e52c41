//! The hot path allocates nothing on the heap in steady state.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cudalloc::{CachingAllocator, Config, SimBackend};

struct Counting;
static COUNT: AtomicU64 = AtomicU64::new(0);
static ON: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards every call to `System` unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test for both segment kinds: the counter is global, so they must not run at once.
#[test]
fn cached_malloc_free_pairs_do_not_touch_the_heap() {
    // The defaults (expandable segments) and PyTorch's fixed segments.
    for config in [Config::default(), Config::fixed_segments()] {
        cached_pairs(config);
    }
}

fn cached_pairs(config: Config) {
    let alloc = CachingAllocator::new(SimBackend::new(1 << 30).virtual_only(), config).unwrap();
    let before = COUNT.load(Ordering::Relaxed);
    let sizes = [
        512u64,
        3000,
        65536,
        1 << 20,
        5 << 20,
        12 << 20,
        100,
        300_000,
    ];
    let run = || {
        for _ in 0..1000 {
            for &s in &sizes {
                let a = alloc.malloc(s, 0).unwrap();
                std::hint::black_box(a.ptr());
            }
            // Raw path too: freed with the stream named (the C ABI's way) and without.
            let p = alloc.allocate_raw(0, 4096, 0).unwrap();
            alloc.free_raw(0, p).unwrap();
            let p = alloc.allocate_raw(0, 70_000, 0).unwrap();
            alloc.free_raw_on(0, p, Some(0)).unwrap();
        }
    };
    run(); // warm up: segments, slabs and maps reach their steady size
    ON.store(true, Ordering::Relaxed);
    run();
    ON.store(false, Ordering::Relaxed);
    assert_eq!(
        COUNT.load(Ordering::Relaxed) - before,
        0,
        "heap allocations in steady state ({})",
        alloc.config()
    );
}
