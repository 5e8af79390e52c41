//! Which device addresses the cache owns: a [`Backend`] wrapper that records every segment
//! (and every reserved range of an expandable segment) the allocator takes from the driver,
//! from the moment the driver hands it out until the driver has taken it back, and how many
//! bytes of device memory stand behind them.
//!
//! Responsible for: answering "is this address inside memory the cache holds?" (so a free of
//! it never reaches the driver, which would take a segment the cache still hands out), and
//! reading the driver's free memory and the cache's resident bytes at one moment (so
//! `cuMemGetInfo_v2` cannot count a segment both as the driver's free memory and as the
//! cache's). Must not: decide anything about blocks (the allocator does), or call the driver
//! other than through the wrapped backend. Its lock is taken inside the allocator's (a new
//! segment is allocated with a stream's lock held), so nothing here may call back into the
//! allocator while holding it. Every method of [`Backend`] is forwarded: one added to the
//! trait with a default body must be forwarded here too, or the wrapper would answer with
//! the default instead of the driver.

use std::collections::BTreeMap;

use core::backend::{Backend, EventId, MemInfo, StreamId};
use core::error::BackendError;
use parking_lot::RwLock;

#[derive(Default)]
struct Held {
    /// Base → length of every segment and reserved range the driver handed the cache.
    ranges: BTreeMap<u64, u64>,
    /// Bytes of device memory behind them (plain segments and mapped pages).
    resident: u64,
}

impl Held {
    fn contains(&self, addr: u64) -> bool {
        self.ranges
            .range(..=addr)
            .next_back()
            .is_some_and(|(&base, &len)| addr - base < len)
    }
}

/// `B`, with the ranges it handed out recorded per device.
pub(crate) struct Owned<B> {
    inner: B,
    held: Box<[RwLock<Held>]>,
}

impl<B: Backend> Owned<B> {
    pub(crate) fn new(inner: B) -> Owned<B> {
        let held = (0..inner.device_count())
            .map(|_| RwLock::new(Held::default()))
            .collect();
        Owned { inner, held }
    }

    /// Whether `addr` lies inside a segment or reserved range the cache holds, on any device.
    pub(crate) fn owns(&self, addr: u64) -> bool {
        self.held.iter().any(|h| h.read().contains(addr))
    }

    /// `f` (a read of the driver's memory figures), run while no segment of `device` comes or
    /// goes, and the bytes the cache holds on `device` at that moment.
    pub(crate) fn resident_during<R>(&self, device: usize, f: impl FnOnce() -> R) -> (R, u64) {
        match self.held.get(device) {
            Some(h) => {
                let g = h.read();
                let r = f();
                (r, g.resident)
            }
            None => (f(), 0),
        }
    }

    /// Run a driver call that changes `device`'s ranges with its lock held, so that readers
    /// see the driver and the record change together.
    fn change<R>(&self, device: usize, f: impl FnOnce(&B, Option<&mut Held>) -> R) -> R {
        match self.held.get(device) {
            Some(h) => f(&self.inner, Some(&mut h.write())),
            None => f(&self.inner, None),
        }
    }
}

impl<B: Backend> Backend for Owned<B> {
    fn device_count(&self) -> usize {
        self.inner.device_count()
    }

    fn alloc_segment(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        self.change(device, |b, held| {
            let addr = b.alloc_segment(device, size)?;
            if let Some(h) = held {
                h.ranges.insert(addr, size);
                h.resident += size;
            }
            Ok(addr)
        })
    }

    fn free_segment(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        self.change(device, |b, held| {
            let r = b.free_segment(device, addr, size);
            if let Some(h) = held {
                // A segment the driver failed to take back is lost, not the driver's again:
                // it stays owned (no free inside it reaches the driver), but is no longer
                // counted as memory the cache can hand out.
                if r.is_ok() {
                    h.ranges.remove(&addr);
                }
                h.resident = h.resident.saturating_sub(size);
            }
            r
        })
    }

    fn mem_info(&self, device: usize) -> Result<MemInfo, BackendError> {
        self.inner.mem_info(device)
    }

    fn record_event(&self, device: usize, stream: StreamId) -> Result<EventId, BackendError> {
        self.inner.record_event(device, stream)
    }

    fn query_event(&self, device: usize, event: EventId) -> Result<bool, BackendError> {
        self.inner.query_event(device, event)
    }

    fn synchronize_event(&self, device: usize, event: EventId) -> Result<(), BackendError> {
        self.inner.synchronize_event(device, event)
    }

    fn release_event(&self, device: usize, event: EventId) {
        self.inner.release_event(device, event);
    }

    fn synchronize_device(&self, device: usize) -> Result<(), BackendError> {
        self.inner.synchronize_device(device)
    }

    fn vmm_granularity(&self, device: usize) -> Result<u64, BackendError> {
        self.inner.vmm_granularity(device)
    }

    fn reserve_range(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        self.change(device, |b, held| {
            let addr = b.reserve_range(device, size)?;
            if let Some(h) = held {
                h.ranges.insert(addr, size);
            }
            Ok(addr)
        })
    }

    fn free_range(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        self.change(device, |b, held| {
            let r = b.free_range(device, addr, size);
            if let Some(h) = held
                && r.is_ok()
            {
                h.ranges.remove(&addr);
            }
            r
        })
    }

    fn map_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        self.change(device, |b, held| {
            let r = b.map_pages(device, addr, size);
            if let Some(h) = held
                && r.is_ok()
            {
                h.resident += size;
            }
            r
        })
    }

    fn unmap_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        self.change(device, |b, held| {
            let r = b.unmap_pages(device, addr, size);
            if let Some(h) = held {
                // As free_segment: on failure the pages are lost to the cache either way.
                h.resident = h.resident.saturating_sub(size);
            }
            r
        })
    }
}
