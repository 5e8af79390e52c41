//! Device memory coming and going: segments allocated and freed, pages mapped and unmapped,
//! address ranges reserved, each counted against the memory-fraction limit.

use super::*;

impl<B: Backend> CachingAllocator<B> {
    /// Count `size` more reserved bytes, within the memory-fraction limit.
    pub(super) fn reserve_bytes(dev: &Device, size: u64) -> Result<(), BackendError> {
        let limit = dev.limit.load(Ordering::Relaxed);
        let mut cur = dev.reserved.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(size) > limit {
                return Err(BackendError::OutOfMemory);
            }
            match dev.reserved.compare_exchange_weak(
                cur,
                cur + size,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    /// Serve `req` by mapping pages into the stream's expandable segment of its pool
    /// (reserving the segment's address range first if there is none). A failed map
    /// changes nothing: the segment stays as it was.
    pub(super) fn grow_expandable(
        &self,
        dev: &Device,
        g: &mut StreamPools,
        req: &Request,
    ) -> Result<(BlockId, u64), BackendError> {
        let gran = dev.granularity;
        if g.expandable_segment(req.pool).is_none() {
            let total = self.backend.mem_info(dev.index)?.total;
            // Address space is cheap: reserve well beyond the device's memory so that
            // free pages unmapped in the middle never leave a large request without a
            // contiguous range.
            let want = match req.pool {
                PoolKind::Large => total.saturating_mul(4),
                PoolKind::Small => total / 2,
            };
            let size = want.max(req.rounded).div_ceil(gran).max(1) * gran;
            let addr = self.backend.reserve_range(dev.index, size)?;
            g.add_expandable_segment(addr, size, req.pool, gran);
            stats::increase(&mut dev.seg_stats.lock().segment, req.pool, 1);
        }
        // No free block of this stream serves the request: give back the whole free pages
        // it holds before mapping more, or they would stay mapped beside the new pages,
        // reserved for nothing. (Keeping them only when they add up to less than the
        // request was measured too, and did worse on the shared traces.)
        {
            self.unmap_free_pages(dev, g, false).map_err(|e| match e {
                Error::Backend(b) => b,
                other => BackendError::Driver {
                    code: -1,
                    message: other.to_string(),
                },
            })?;
        }
        let plan = g.plan_map(req, gran).ok_or(BackendError::OutOfMemory)?;
        Self::reserve_bytes(dev, plan.len)?;
        if let Err(e) = self.backend.map_pages(dev.index, plan.addr, plan.len) {
            dev.reserved.fetch_sub(plan.len, Ordering::AcqRel);
            return Err(e);
        }
        dev.num_device_alloc.fetch_add(1, Ordering::Relaxed);
        dev.history
            .record(Action::SegmentMap, plan.addr, plan.len, g.stream());
        stats::increase(&mut dev.seg_stats.lock().reserved_bytes, req.pool, plan.len);
        let b = g.commit_map(plan, req, &self.config);
        Ok((b, g.block_addr(b)))
    }

    /// Ask the backend for a segment, within the memory-fraction limit.
    pub(super) fn alloc_segment(
        &self,
        dev: &Device,
        req: &Request,
        stream: StreamId,
    ) -> Result<u64, BackendError> {
        let size = req.segment_size;
        Self::reserve_bytes(dev, size)?;
        match self.backend.alloc_segment(dev.index, size) {
            Ok(addr) => {
                dev.num_device_alloc.fetch_add(1, Ordering::Relaxed);
                dev.history.record(Action::SegmentAlloc, addr, size, stream);
                let mut s = dev.seg_stats.lock();
                stats::increase(&mut s.segment, req.pool, 1);
                stats::increase(&mut s.reserved_bytes, req.pool, size);
                if size >= self.config.max_split_size {
                    s.oversize_segments.increase(1);
                }
                Ok(addr)
            }
            Err(e) => {
                dev.reserved.fetch_sub(size, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Unmap every whole free page of the expandable segments of one stream, and give back
    /// the address range of any that has nothing mapped left.
    pub(super) fn unmap_free_pages(
        &self,
        dev: &Device,
        g: &mut StreamPools,
        release_empty: bool,
    ) -> Result<()> {
        if dev.granularity == 0 {
            return Ok(());
        }
        let mut first_err = None;
        for plan in g.plan_unmap(dev.granularity) {
            match self.backend.unmap_pages(dev.index, plan.addr, plan.len) {
                Ok(()) => {
                    let pool = plan.pool;
                    g.commit_unmap(plan);
                    dev.reserved.fetch_sub(plan.len, Ordering::AcqRel);
                    dev.num_device_free.fetch_add(1, Ordering::Relaxed);
                    dev.history
                        .record(Action::SegmentUnmap, plan.addr, plan.len, g.stream());
                    stats::decrease(&mut dev.seg_stats.lock().reserved_bytes, pool, plan.len);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut empty = Vec::new();
        if release_empty {
            g.release_empty_expandable(&mut empty);
        }
        for r in empty {
            stats::decrease(&mut dev.seg_stats.lock().segment, r.pool, 1);
            if let Err(e) = self.backend.free_range(dev.index, r.addr, r.size) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Return released segments to the driver and account for them. Tries every segment
    /// even if one fails; reports the first failure.
    pub(super) fn free_segments(&self, dev: &Device, segs: &[ReleasedSegment]) -> Result<()> {
        let mut first_err = None;
        for s in segs {
            let r = self.backend.free_segment(dev.index, s.addr, s.size);
            // Whatever the driver said, the policy no longer has the segment: account for it
            // as gone so the numbers stay consistent (a failed free is reported).
            dev.reserved.fetch_sub(s.size, Ordering::AcqRel);
            dev.num_device_free.fetch_add(1, Ordering::Relaxed);
            dev.history
                .record(Action::SegmentFree, s.addr, s.size, s.stream);
            let mut st = dev.seg_stats.lock();
            stats::decrease(&mut st.segment, s.pool, 1);
            stats::decrease(&mut st.reserved_bytes, s.pool, s.size);
            if s.size >= self.config.max_split_size {
                st.oversize_segments.decrease(1);
            }
            drop(st);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }
}
