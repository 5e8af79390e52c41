//! Reports: statistics (PyTorch's keys), the snapshot, the event history switch, the
//! figures the summary and the OOM message use, and the invariant check the tests call.
//! Read-only, but for resetting statistics.

use super::*;

/// What a device's cache holds, for the summary and the out-of-memory report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheFigures {
    /// The largest free block of any stream.
    pub largest_free: u64,
    /// Free bytes in cached blocks, every stream.
    pub free_cached: u64,
    /// Bytes of freed blocks still waiting on other streams' events.
    pub pending: u64,
}

impl<B: Backend> CachingAllocator<B> {
    /// Start (or stop) recording the event history of every device, keeping at most
    /// `max_entries` per device (PyTorch's `_record_memory_history`).
    pub fn record_history(&self, enabled: bool, max_entries: usize) {
        for d in self.devices.iter() {
            d.ledger.set_history(enabled, max_entries);
        }
    }

    /// The recorded history of `device`, oldest first.
    ///
    /// # Errors
    /// An unknown device.
    pub fn history(&self, device: usize) -> Result<Vec<Entry>> {
        Ok(self.dev(device)?.ledger.history())
    }

    /// Statistics of `device`, `torch.cuda.memory_stats()` style.
    ///
    /// Per-stream statistics are kept under each stream's own lock; their `peak` is summed
    /// over streams, which is exact when one stream is in use and an upper bound when
    /// several are. Segment statistics (`segment`, `reserved_bytes`) are device-wide and
    /// exact.
    ///
    /// # Errors
    /// An unknown device.
    pub fn memory_stats(&self, device: usize) -> Result<MemoryStats> {
        let dev = self.dev(device)?;
        let mut blocks = BlockStats::default();
        for stream_slot in dev.slots() {
            blocks.merge(stream_slot.lock().stats());
        }
        Ok(MemoryStats {
            blocks,
            segments: dev.ledger.segment_stats(),
            num_alloc_retries: dev.num_alloc_retries.load(Ordering::Relaxed),
            num_ooms: dev.ledger.ooms(),
            num_sync_all_streams: dev.num_sync_all_streams.load(Ordering::Relaxed),
            num_device_alloc: dev.ledger.device_allocs(),
            num_device_free: dev.ledger.device_frees(),
            max_split_size: if self.config.max_split_size == u64::MAX {
                -1
            } else {
                self.config.max_split_size as i64
            },
        })
    }

    /// Peaks back to current values.
    ///
    /// # Errors
    /// An unknown device.
    pub fn reset_peak_memory_stats(&self, device: usize) -> Result<()> {
        let dev = self.dev(device)?;
        for stream_slot in dev.slots() {
            stream_slot.lock().stats_mut().reset_peak();
        }
        dev.ledger.reset_peak();
        Ok(())
    }

    /// Accumulated counters (`allocated`, `freed`, retries, OOMs, driver calls) to zero.
    ///
    /// # Errors
    /// An unknown device.
    pub fn reset_accumulated_memory_stats(&self, device: usize) -> Result<()> {
        let dev = self.dev(device)?;
        for stream_slot in dev.slots() {
            stream_slot.lock().stats_mut().reset_accumulated();
        }
        dev.ledger.reset_accumulated();
        for c in [&dev.num_alloc_retries, &dev.num_sync_all_streams] {
            c.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Every segment of `device` with its blocks, sorted by address.
    ///
    /// # Errors
    /// An unknown device.
    pub fn snapshot(&self, device: usize) -> Result<Vec<SegmentInfo>> {
        let dev = self.dev(device)?;
        let mut v = Vec::new();
        for stream_slot in dev.slots() {
            v.extend(stream_slot.lock().segments());
        }
        v.sort_by_key(|s| s.addr);
        Ok(v)
    }

    /// Cache-wide figures of one device used by reports.
    ///
    /// # Errors
    /// An unknown device.
    pub fn cache_figures(&self, device: usize) -> Result<CacheFigures> {
        let dev = self.dev(device)?;
        let mut f = CacheFigures::default();
        for stream_slot in dev.slots() {
            let g = stream_slot.lock();
            f.largest_free = f.largest_free.max(g.largest_free());
            f.free_cached = f.free_cached.saturating_add(g.free_bytes());
            f.pending = f.pending.saturating_add(g.pending_bytes());
        }
        Ok(f)
    }

    /// Bytes reserved from the driver on `device`.
    pub fn reserved_bytes(&self, device: usize) -> u64 {
        self.devices.get(device).map_or(0, |d| d.ledger.reserved())
    }

    /// Check every invariant (pools of every stream, segment accounting, no overlap between
    /// segments). Takes every lock in turn: for tests and debugging.
    ///
    /// # Errors
    /// A description of the first broken invariant.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        for dev in self.devices.iter() {
            let mut segs = Vec::new();
            let mut seg_count = 0usize;
            for stream_slot in dev.slots() {
                let g = stream_slot.lock();
                g.check_invariants(&self.config).map_err(|e| {
                    format!("device {} stream {}: {e}", dev.index, stream_slot.stream)
                })?;
                segs.extend(g.segments());
                seg_count += g.segment_count();
                if dev.granularity > 0 {
                    for s in g.segments().iter().filter(|s| s.expandable) {
                        if s.addr % dev.granularity != 0 || s.size % dev.granularity != 0 {
                            return Err(format!(
                                "device {}: mapped run {:#x}+{} is not page-aligned",
                                dev.index, s.addr, s.size
                            ));
                        }
                    }
                }
            }
            segs.sort_by_key(|s| s.addr);
            for w in segs.windows(2) {
                if w[0].addr + w[0].size > w[1].addr {
                    return Err(format!(
                        "device {}: segments at {:#x} and {:#x} overlap",
                        dev.index, w[0].addr, w[1].addr
                    ));
                }
            }
            let total: u64 = segs.iter().map(|s| s.size).sum();
            let reserved = dev.ledger.reserved();
            if total != reserved {
                return Err(format!(
                    "device {}: segments total {total}, reserved counter {reserved}",
                    dev.index
                ));
            }
            let st = dev.ledger.segment_stats();
            if st.reserved_bytes[0].current as u64 != total
                || st.segment[0].current as usize != seg_count
            {
                return Err(format!(
                    "device {}: segment stats {:?}/{:?} vs recount {}/{}",
                    dev.index, st.segment[0], st.reserved_bytes[0], seg_count, total
                ));
            }
            for stream_slot in dev.slots() {
                let g = stream_slot.lock();
                for (ptr, b) in g.raw.iter() {
                    if g.block_state(b) != Some(BlockState::Allocated) || g.block_addr(b) != ptr {
                        return Err(format!("raw pointer {ptr:#x} maps to a dead block"));
                    }
                }
            }
        }
        Ok(())
    }
}
