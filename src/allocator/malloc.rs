//! The allocation path: the cached fast path under the stream's lock, then the slow path
//! — a new segment or mapped pages — and the out-of-memory ladder, then the report.

use super::*;

/// Whether an allocation is raw (the C layer's, freed by address): its address then goes
/// into the stream's pointer map under the same lock that handed the block out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Raw {
    No,
    Yes,
}

impl Pools {
    /// Block `b` was just handed out: its address, booked in the pointer map if `raw`.
    #[inline]
    pub(super) fn handed_out(&mut self, b: BlockId, raw: Raw) -> (BlockId, u64) {
        let ptr = self.block_addr(b);
        if raw == Raw::Yes {
            self.raw.insert(ptr, b);
        }
        (b, ptr)
    }
}

impl<B: Backend> CachingAllocator<B> {
    /// Allocate `size` bytes on the stream of `stream_slot`: its block and address.
    #[inline]
    pub(super) fn alloc_block(
        &self,
        dev: &Device,
        stream_slot: &StreamSlot,
        size: u64,
        raw: Raw,
    ) -> Result<(BlockId, u64)> {
        if let Some(found) = self.alloc_cached(stream_slot, size, raw) {
            dev.ledger
                .block_allocated(found.1, size, stream_slot.stream);
            return Ok(found);
        }
        self.alloc_block_full(dev, stream_slot, size, raw)
    }

    /// The cached fast path alone: a block from the stream's cache when the request is
    /// valid, the allocator has been used before and no event waits to be processed;
    /// `None` sends the request down the full path, which checks it, processes events and
    /// tries the cache again before anything else. It answers an `Option`, not a `Result`:
    /// building the 80-byte `Result` inside it and copying it out cost a store-forwarding
    /// stall (`examples/pairs`, small mix: 59 -> 50 ns a pair without). One copy of a
    /// `Result` is left, where the callers return theirs; building `Ok` only on the
    /// caller's side moved that stall into the caller's caller and cost more (fb4446f,
    /// reverted).
    #[inline]
    fn alloc_cached(
        &self,
        stream_slot: &StreamSlot,
        size: u64,
        raw: Raw,
    ) -> Option<(BlockId, u64)> {
        if size == 0 || size > MAX_REQUEST || !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let req = Request::new(size, &self.config);
        let mut g = stream_slot.lock_hot();
        if g.has_pending() {
            return None;
        }
        let b = g.try_alloc(&req, &self.config)?;
        Some(g.handed_out(b, raw))
    }

    /// Every allocation the cached fast path did not serve: the request checked, events
    /// processed, the cache tried, then the slow path; the ledger books the outcome.
    #[inline(never)]
    fn alloc_block_full(
        &self,
        dev: &Device,
        stream_slot: &StreamSlot,
        size: u64,
        raw: Raw,
    ) -> Result<(BlockId, u64)> {
        let r = self.alloc_block_inner(dev, stream_slot, size, raw);
        match &r {
            Ok((_, ptr)) => dev.ledger.block_allocated(*ptr, size, stream_slot.stream),
            Err(Error::OutOfMemory(e)) => {
                dev.ledger
                    .out_of_memory(size, e.device_free, stream_slot.stream)
            }
            Err(_) => {}
        }
        r
    }

    fn alloc_block_inner(
        &self,
        dev: &Device,
        stream_slot: &StreamSlot,
        size: u64,
        raw: Raw,
    ) -> Result<(BlockId, u64)> {
        if size == 0 || size > MAX_REQUEST {
            return Err(Error::InvalidArgument(format!(
                "cannot allocate {size} bytes (must be 1..={MAX_REQUEST})"
            )));
        }
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        let req = Request::new(size, &self.config);
        {
            let mut g = stream_slot.lock_hot();
            if g.has_pending() {
                self.process_events(dev, &mut g)?;
            }
            if let Some(b) = g.try_alloc(&req, &self.config) {
                return Ok(g.handed_out(b, raw));
            }
        }
        self.alloc_slow(dev, stream_slot, &req, raw)
    }

    #[cold]
    pub(super) fn alloc_slow(
        &self,
        dev: &Device,
        stream_slot: &StreamSlot,
        req: &Request,
        raw: Raw,
    ) -> Result<(BlockId, u64)> {
        if self.config.garbage_collection_threshold > 0.0 && dev.fraction.lock().is_some() {
            self.garbage_collect(dev)?;
        }
        // The out-of-memory ladder, PyTorch's: try; release every fully free cached segment
        // and try again; wait for all outstanding events, release again, try a last time;
        // only then report out of memory.
        if let Some(found) = self.cached_or_grown(dev, stream_slot, req, raw)? {
            return Ok(found);
        }
        dev.num_alloc_retries.fetch_add(1, Ordering::Relaxed);
        self.release_cached(dev, false)?;
        if let Some(found) = self.cached_or_grown(dev, stream_slot, req, raw)? {
            return Ok(found);
        }
        self.release_cached(dev, true)?;
        if let Some(found) = self.cached_or_grown(dev, stream_slot, req, raw)? {
            return Ok(found);
        }
        Err(Error::OutOfMemory(Box::new(self.oom_report(dev, req))))
    }

    /// One rung of the ladder: a cached block (completed events processed first), else a
    /// new segment or newly mapped pages. `None`: the device (or the memory fraction) has no
    /// room.
    ///
    /// The stream's lock is held across the driver's allocation on purpose: a second thread
    /// of the same stream that missed the cache too would otherwise get a segment of its own
    /// instead of the rest of this one. Other streams have their own locks and are not held
    /// up; the release steps of the ladder run with no stream lock held.
    fn cached_or_grown(
        &self,
        dev: &Device,
        stream_slot: &StreamSlot,
        req: &Request,
        raw: Raw,
    ) -> Result<Option<(BlockId, u64)>> {
        let mut g = stream_slot.lock();
        if g.has_pending() {
            self.process_events(dev, &mut g)?;
        }
        if let Some(b) = g.try_alloc(req, &self.config) {
            return Ok(Some(g.handed_out(b, raw)));
        }
        let grown = if dev.granularity > 0 {
            self.grow_expandable(dev, &mut g, req)
        } else {
            self.alloc_segment(dev, req, stream_slot.stream)
                .map(|addr| {
                    let b = g.add_segment_and_alloc(addr, req.segment_size, req, &self.config);
                    (b, addr)
                })
        };
        match grown {
            Ok((b, _)) => Ok(Some(g.handed_out(b, raw))),
            Err(BackendError::OutOfMemory) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn oom_report(&self, dev: &Device, req: &Request) -> OomError {
        let info = self.backend.mem_info(dev.index).unwrap_or_default();
        let stats = self.memory_stats(dev.index).unwrap_or_default();
        let largest = self
            .cache_figures(dev.index)
            .unwrap_or_default()
            .largest_free;
        let reserved = dev.ledger.reserved();
        let allocated = stats.blocks.allocated_bytes[0].current.max(0) as u64;
        let limit = dev.ledger.limit();
        OomError {
            device: dev.index,
            requested: req.requested,
            rounded: req.rounded,
            segment_size: req.segment_size,
            device_total: info.total,
            device_free: info.free,
            allocated,
            reserved,
            reserved_free: reserved.saturating_sub(allocated),
            largest_free_block: largest,
            limit: (limit != u64::MAX).then_some(limit),
            max_split_size: self.config.max_split_size,
        }
    }
}
