//! Multithreaded stress on the simulated backend: every live block carries a tag written
//! through its host-backed pointer and checked before free; blocks must never overlap; at the
//! end every statistic is back to zero and nothing is leaked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cudalloc::{CachingAllocator, Config, SimBackend};

const MIB: u64 = 1 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn size(&mut self) -> u64 {
        match self.next() % 10 {
            0..=5 => 1 + self.next() % MIB,
            6..=8 => MIB + self.next() % (9 * MIB),
            _ => 10 * MIB + self.next() % (30 * MIB),
        }
    }
}

fn fill(ptr: u64, size: u64, tag: u8) {
    let n = size.min(4096) as usize;
    // SAFETY: simulated segments are host memory; the first `n` ≤ `size` bytes belong to
    // this live allocation, owned by the calling thread.
    unsafe { std::ptr::write_bytes(ptr as *mut u8, tag, n) };
    if size > 8192 {
        // SAFETY: as above, the last 4 KiB of the allocation.
        unsafe { std::ptr::write_bytes((ptr + size - 4096) as *mut u8, tag, 4096) };
    }
}

fn verify(ptr: u64, size: u64, tag: u8) -> bool {
    let n = size.min(4096) as usize;
    // SAFETY: reading inside the caller's live allocation (see `fill`).
    let head = unsafe { std::slice::from_raw_parts(ptr as *const u8, n) };
    let ok = head.iter().all(|&b| b == tag);
    if size > 8192 {
        // SAFETY: as above.
        let tail = unsafe { std::slice::from_raw_parts((ptr + size - 4096) as *const u8, 4096) };
        return ok && tail.iter().all(|&b| b == tag);
    }
    ok
}

fn stress(devices: usize, threads: usize, iters: usize) {
    let backend = SimBackend::with_devices(devices, 4 << 30).auto_complete();
    let shared_stream = backend.create_stream();
    let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
    let handoff: Mutex<Vec<(usize, u64, u64, u8)>> = Mutex::new(Vec::new());
    let checked = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (alloc, handoff, checked) = (&alloc, &handoff, &checked);
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678));
                // Half the threads share a stream; the others have their own.
                let stream = if t % 2 == 0 {
                    shared_stream
                } else {
                    alloc.backend().create_stream()
                };
                let dev = t % devices;
                let tag = (t as u8).wrapping_mul(37).wrapping_add(1);
                let mut live = Vec::new();
                for i in 0..iters {
                    let size = rng.size();
                    if rng.next().is_multiple_of(5) {
                        // A raw allocation freed by whichever thread takes it.
                        let p = alloc.allocate_raw(dev, size, stream).unwrap();
                        fill(p, size, tag ^ 0x55);
                        handoff.lock().unwrap().push((dev, p, size, tag ^ 0x55));
                    } else {
                        let a = alloc.malloc_on(dev, size, stream).unwrap();
                        fill(a.ptr(), size, tag);
                        live.push(a);
                    }
                    if (live.len() > 24 || rng.next().is_multiple_of(3)) && !live.is_empty() {
                        let k = (rng.next() as usize) % live.len();
                        let a = live.swap_remove(k);
                        assert!(verify(a.ptr(), a.size(), tag), "tag overwritten");
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                    if rng.next().is_multiple_of(4) {
                        let item = handoff.lock().unwrap().pop();
                        if let Some((d, p, size, tg)) = item {
                            assert!(verify(p, size, tg), "raw block tag overwritten");
                            alloc.free_raw(d, p).unwrap();
                            checked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if t == 0 && i.is_multiple_of(97) {
                        alloc.empty_cache(None).unwrap();
                    }
                }
                for a in live {
                    assert!(verify(a.ptr(), a.size(), tag));
                }
            });
        }
    });
    for (d, p, size, tg) in handoff.into_inner().unwrap() {
        assert!(verify(p, size, tg));
        alloc.free_raw(d, p).unwrap();
    }
    alloc.check_invariants().unwrap();
    for d in 0..devices {
        let st = alloc.memory_stats(d).unwrap();
        assert_eq!(st.blocks.allocation[0].current, 0);
        assert_eq!(st.blocks.allocated_bytes[0].current, 0);
        assert_eq!(st.blocks.active_bytes[0].current, 0);
        assert_eq!(st.blocks.requested_bytes[0].current, 0);
        assert!(st.blocks.allocation[0].allocated > 0);
    }
    alloc.empty_cache(None).unwrap();
    alloc.check_invariants().unwrap();
    assert_eq!(alloc.backend().counts().used, 0, "segments leaked");
    assert_eq!(alloc.backend().live_events(), 0, "events leaked");
    for d in 0..devices {
        let st = alloc.memory_stats(d).unwrap();
        assert_eq!(st.segments.reserved_bytes[0].current, 0);
        assert_eq!(st.num_device_alloc, st.num_device_free);
    }
    assert!(checked.load(Ordering::Relaxed) > iters as u64);
}

#[test]
fn threads_on_own_and_shared_streams() {
    stress(1, 6, 600);
}

#[test]
fn threads_over_two_devices() {
    stress(2, 4, 400);
}

#[test]
fn cross_stream_use_waits_for_events_under_threads() {
    // Manual events: a block used on another stream is reused only after that stream's
    // work completes, even while other threads churn.
    let backend = SimBackend::new(1 << 30);
    let s1 = backend.create_stream();
    let s2 = backend.create_stream();
    let alloc = CachingAllocator::new(backend, Config::fixed_segments()).unwrap();
    let a = alloc.malloc(MIB, s1).unwrap();
    let addr = a.ptr();
    a.record_stream(s2);
    drop(a);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..200 {
                    let b = alloc.malloc(MIB, s1).unwrap();
                    assert_ne!(b.ptr(), addr, "reused before s2's work completed");
                }
            });
        }
    });
    alloc.backend().complete_stream(0, s2);
    // Once the event completed the block is reusable. Which free block the next malloc
    // gets depends on how the threads overlapped (a segment they added may lie lower and
    // win the tie), so keep taking blocks until it comes back.
    let mut held = Vec::new();
    while held.len() < 16 {
        let b = alloc.malloc(MIB, s1).unwrap();
        if b.ptr() == addr {
            break;
        }
        held.push(b);
    }
    assert!(
        held.len() < 16,
        "the block is reused once the event completed"
    );
    drop(held);
    alloc.check_invariants().unwrap();
}
