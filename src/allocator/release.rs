//! Releasing cache: `empty_cache`, the release steps of the out-of-memory ladder, garbage
//! collection over its threshold, and the memory-fraction limit that drives them.

use super::*;

impl<B: Backend> CachingAllocator<B> {
    /// Release every entirely free segment of `dev` (waiting for outstanding events first
    /// when `sync`).
    ///
    /// An error on one stream (an event, an unmap) does not stop the others: segments the
    /// policy already let go of must reach [`Self::free_segments`], or they would be lost to
    /// both the policy and the driver and `reserved` would never come down. The first error
    /// is reported. (Found by the fault tests of a helper branch, `tests` 321eea8.)
    pub(super) fn release_cached(&self, dev: &Device, sync: bool) -> Result<()> {
        if sync {
            dev.num_sync_all_streams.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for stream_slot in dev.slots() {
            let mut g = stream_slot.lock();
            let events = if sync {
                self.sync_events(dev, &mut g)
            } else if g.has_pending() {
                self.process_events(dev, &mut g)
            } else {
                Ok(())
            };
            if let Err(e) = events {
                first_err.get_or_insert(e);
            }
            g.release_free_segments(&mut out);
            if let Err(e) = self.unmap_free_pages(dev, &mut g, true) {
                first_err.get_or_insert(e);
            }
        }
        let freed = self.free_segments(dev, &out);
        match first_err {
            Some(e) => Err(e),
            None => freed,
        }
    }

    /// PyTorch's `garbage_collect_cached_blocks`: when reserved memory exceeds
    /// `garbage_collection_threshold` × the memory-fraction limit, release whole free
    /// large-pool segments, oldest (least recently useful) first.
    pub(super) fn garbage_collect(&self, dev: &Device) -> Result<()> {
        let limit = dev.ledger.limit();
        let threshold = (self.config.garbage_collection_threshold * limit as f64) as u64;
        let reserved = dev.ledger.reserved();
        if reserved <= threshold {
            return Ok(());
        }
        let target = reserved - threshold;
        if dev.granularity > 0 {
            // Expandable segments carry no per-block age: over the threshold, their free
            // pages all go back.
            for stream_slot in dev.slots() {
                self.unmap_free_pages(dev, &mut stream_slot.lock(), true)?;
            }
        }
        let mut reclaimed = 0u64;
        let mut out = Vec::new();
        for stream_slot in dev.slots() {
            if reclaimed >= target {
                break;
            }
            let mut g = stream_slot.lock();
            let mut cands = g.gc_candidates();
            while reclaimed < target && !cands.is_empty() {
                let avg = cands.iter().map(|c| c.0 as f64).sum::<f64>() / cands.len() as f64;
                let before = out.len();
                cands.retain(|&(age, b)| {
                    if age as f64 >= avg {
                        if let Some(r) = g.release_gc_candidate(b) {
                            reclaimed += r.size;
                            out.push(r);
                        }
                        false
                    } else {
                        true
                    }
                });
                if out.len() == before {
                    break;
                }
            }
        }
        self.free_segments(dev, &out)
    }

    /// Return every entirely free segment to the driver (`device`: one device, or all).
    ///
    /// # Errors
    /// An unknown device; backend errors (every segment is still tried).
    pub fn empty_cache(&self, device: Option<usize>) -> Result<()> {
        match device {
            Some(d) => self.release_cached(self.dev(d)?, false),
            None => {
                let mut res = Ok(());
                for dev in self.devices.iter() {
                    let r = self.release_cached(dev, false);
                    if res.is_ok() {
                        res = r;
                    }
                }
                res
            }
        }
    }

    /// Limit this allocator to `fraction` of the device's total memory (PyTorch's
    /// `set_per_process_memory_fraction`).
    ///
    /// # Errors
    /// A fraction outside `0.0..=1.0`, an unknown device, a backend error.
    pub fn set_memory_fraction(&self, device: usize, fraction: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::InvalidArgument(format!(
                "memory fraction {fraction} is not within 0.0..=1.0"
            )));
        }
        let dev = self.dev(device)?;
        let total = self.backend.mem_info(device)?.total;
        *dev.fraction.lock() = Some(fraction);
        dev.ledger.set_limit((total as f64 * fraction) as u64);
        Ok(())
    }

    /// The memory fraction in force, if one was set.
    pub fn memory_fraction(&self, device: usize) -> Option<f64> {
        self.devices.get(device).and_then(|d| *d.fraction.lock())
    }
}
