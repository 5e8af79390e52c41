//! The lock of one stream's pools: a test-and-set lock whose unlock is a plain release store,
//! so a lock and unlock pair costs one atomic read-modify-write instead of parking_lot's two
//! (a cached malloc+free pair takes the lock twice; the two round trips were a quarter of its
//! profile). Nobody is woken on unlock: a waiter spins briefly, then yields, then sleeps in
//! steps of up to 50 µs. That suits this lock's contention — threads of one stream, and the
//! slow paths that visit every stream — and would not suit a lock many threads fight over.
//! It must do nothing but lock.

use lock_api::RawMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The raw lock behind [`StreamLock`].
pub(crate) struct RawStreamLock(AtomicBool);

// SAFETY: mutual exclusion holds: `lock` and `try_lock` succeed only by swapping the flag from
// false to true (Acquire), and only the holder stores false (Release, in `unlock`), so all
// that one holder did happens-before what the next one does. The guard may be sent to another
// thread: the lock is not tied to the thread that took it.
unsafe impl RawMutex for RawStreamLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawStreamLock = RawStreamLock(AtomicBool::new(false));
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        !self.0.swap(true, Ordering::Acquire)
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl RawStreamLock {
    #[cold]
    fn lock_contended(&self) {
        let mut waited = 0u32;
        loop {
            // Read until it looks free, then try: waiters do not all write the line.
            while self.0.load(Ordering::Relaxed) {
                match waited {
                    0..100 => std::hint::spin_loop(),
                    100..200 => std::thread::yield_now(),
                    _ => {
                        std::thread::sleep(Duration::from_micros(u64::from((waited - 199).min(50))))
                    }
                }
                waited = waited.saturating_add(1);
            }
            if self.try_lock() {
                return;
            }
        }
    }
}

/// A stream's pools behind [`RawStreamLock`].
pub(crate) type StreamLock<T> = lock_api::Mutex<RawStreamLock, T>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads incrementing under the lock lose no update, also while one holds it long
    /// enough for the others to reach the sleeping stage.
    #[test]
    fn the_lock_excludes_under_contention() {
        let m = StreamLock::new(0u64);
        std::thread::scope(|s| {
            for t in 0..4 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..20_000 {
                        let mut g = m.lock();
                        if t == 0 && i % 5000 == 0 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        *g += 1;
                    }
                });
            }
        });
        assert_eq!(*m.lock(), 80_000);
        assert!(m.try_lock().is_some());
    }
}
