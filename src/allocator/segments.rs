//! Device memory from the driver: segments allocated and freed, expandable segments' address
//! ranges reserved and their pages mapped and unmapped. Every change is booked in the
//! device's [`Ledger`] in the same step; nothing here chooses blocks.

use super::*;
use crate::policy::{MIN_LARGE_ALLOC, MapPlan};

impl<B: Backend> CachingAllocator<B> {
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
            if req.rounded > total {
                // More than the device has: no address range is reserved for it.
                return Err(BackendError::OutOfMemory);
            }
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
            dev.ledger.range_reserved(req.pool);
        }
        // No free block of this stream serves the request: pages must be mapped. Free whole
        // pages kept mapped beside the new ones would be reserved for nothing, but unmapping
        // them costs a driver call now and another when they are needed again. So they are
        // unmapped only for what would take the device's reserved bytes more than one page
        // above its high-water mark: below it, keeping them cannot raise the peak, and the
        // page of slack stops two pools from trading the same page at the mark on every
        // request (a map and an unmap each time; `tests/no_alloc.rs`). Measured against
        // unmapping all of them first (the rule before 2026-12-02): fewer map calls on every
        // shared trace, peaks from 8 MiB lower to 92 MiB higher (README, Results).
        let (_, reserved_range) = g
            .expandable_segment(req.pool)
            .expect("reserved above if missing");
        if req.rounded > reserved_range {
            return Err(BackendError::OutOfMemory);
        }
        let plan = g.plan_map(req, gran).ok_or(BackendError::OutOfMemory)?;
        let to_backend = |e: Error| match e {
            Error::Backend(b) => b,
            other => BackendError::Driver {
                code: -1,
                message: other.to_string(),
            },
        };
        // A large-pool request below 10 MiB maps at least `large_min_map` (20 MiB by
        // default, PyTorch's segment size for such requests), the pages beyond it left free
        // for the next ones: one driver call for several requests on the way up to the
        // peak. The rule below unmaps free pages for them as for the others; where the
        // device (or the memory fraction) still has no room for them, only the pages
        // needed are mapped.
        let exact = plan;
        let min_map = self.config.large_min_map();
        let plan =
            if req.pool == PoolKind::Large && req.rounded < MIN_LARGE_ALLOC && plan.len < min_map {
                g.extend_plan(plan, req.pool, min_map.div_ceil(gran) * gran - plan.len)
            } else {
                plan
            };
        let mark = dev.ledger.high_water() + gran;
        let room = mark.saturating_sub(dev.ledger.reserved()) / gran * gran;
        let need = plan.len.saturating_sub(room);
        let unmaps = g.plan_unmap_for(&plan, need, gran);
        let mut short = need - unmaps.iter().map(|u| u.len).sum::<u64>().min(need);
        self.unmap_pages(dev, g, unmaps).map_err(to_backend)?;
        // What this stream cannot offset, other streams' free pages may: the device's
        // reserved bytes then grow only by what no stream can give back. A stream whose
        // lock is held right now is skipped (waiting for it could deadlock with a stream
        // growing the other way round).
        if short > 0 {
            for slot in dev.slots() {
                if short == 0 {
                    break;
                }
                if slot.stream == g.stream() {
                    continue;
                }
                if let Some(mut other) = slot.try_lock() {
                    let runs = other.plan_unmap_upto(short, gran);
                    short -= runs.iter().map(|u| u.len).sum::<u64>().min(short);
                    self.unmap_pages(dev, &mut other, runs)
                        .map_err(to_backend)?;
                }
            }
        }
        if plan != exact {
            match self.claim_and_map(dev, plan) {
                Ok(()) => return Ok(self.commit_mapped(dev, g, req, plan)),
                Err(BackendError::OutOfMemory) => {}
                Err(e) => return Err(e),
            }
        }
        self.claim_and_map(dev, exact)?;
        Ok(self.commit_mapped(dev, g, req, exact))
    }

    /// Claim the pages of `plan` in the ledger and map them; on failure nothing stays
    /// claimed.
    fn claim_and_map(&self, dev: &Device, plan: MapPlan) -> Result<(), BackendError> {
        dev.ledger.claim(plan.len)?;
        self.backend
            .map_pages(dev.index, plan.addr, plan.len)
            .inspect_err(|_| dev.ledger.unclaim(plan.len))
    }

    /// Book the pages of `plan`, just mapped, and serve `req` from them.
    fn commit_mapped(
        &self,
        dev: &Device,
        g: &mut StreamPools,
        req: &Request,
        plan: MapPlan,
    ) -> (BlockId, u64) {
        dev.ledger
            .pages_mapped(plan.addr, plan.len, req.pool, g.stream());
        let b = g.commit_map(plan, req, &self.config);
        (b, g.block_addr(b))
    }

    /// Ask the backend for a segment, within the memory-fraction limit.
    pub(super) fn alloc_segment(
        &self,
        dev: &Device,
        req: &Request,
        stream: StreamId,
    ) -> Result<u64, BackendError> {
        let size = req.segment_size;
        dev.ledger.claim(size)?;
        match self.backend.alloc_segment(dev.index, size) {
            Ok(addr) => {
                dev.ledger.segment_allocated(addr, size, req.pool, stream);
                Ok(addr)
            }
            Err(e) => {
                dev.ledger.unclaim(size);
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
        let plans = g.plan_unmap(dev.granularity);
        let mut first_err = self.unmap_pages(dev, g, plans).err();
        let mut empty = Vec::new();
        if release_empty {
            g.release_empty_expandable(&mut empty);
        }
        for r in empty {
            dev.ledger.range_released(r.pool);
            if let Err(e) = self.backend.free_range(dev.index, r.addr, r.size) {
                first_err.get_or_insert(e.into());
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Unmap the free page ranges `plans` of one stream; tries every one, reports the first
    /// failure.
    fn unmap_pages(&self, dev: &Device, g: &mut StreamPools, plans: Vec<UnmapPlan>) -> Result<()> {
        let mut first_err = None;
        for plan in plans {
            match self.backend.unmap_pages(dev.index, plan.addr, plan.len) {
                Ok(()) => {
                    g.commit_unmap(plan);
                    dev.ledger
                        .pages_unmapped(plan.addr, plan.len, plan.pool, g.stream());
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
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
            dev.ledger.segment_freed(s);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }
}
