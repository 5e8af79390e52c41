//! Fixed segments: best fit on the stream's free blocks, splitting what is worth keeping,
//! and a new segment when nothing cached fits. Expandable segments have their own file.

use super::*;

impl StreamPools {
    pub(super) fn find_free_fixed(&self, req: &Request, cfg: &Config) -> Option<u32> {
        let (size, id) = match req.pool {
            // Small blocks are never oversize: max_split_size is above the small pool.
            PoolKind::Small => return self.small.first_at_least(req.rounded),
            PoolKind::Large => {
                let (size, _, id) = self.large.first_at_least(req.rounded)?;
                (size, id)
            }
        };
        if self.segments[self.blocks[id as usize].seg as usize].expandable {
            // max_split_size guards fixed segments; free pages of expandable ones go back.
            return Some(id);
        }
        // A request below max_split_size never takes an oversize block...
        if req.rounded < cfg.max_split_size && size >= cfg.max_split_size {
            return None;
        }
        // ...and an oversize request takes one only if little is wasted.
        if req.rounded >= cfg.max_split_size
            && size >= req.rounded.saturating_add(cfg.max_non_split_rounding)
        {
            return None;
        }
        Some(id)
    }

    pub(super) fn should_split(&self, i: u32, rounded: u64, cfg: &Config) -> bool {
        let b = &self.blocks[i as usize];
        let remaining = b.size - rounded;
        if self.segments[b.seg as usize].expandable {
            return remaining >= MIN_BLOCK_SIZE;
        }
        match self.segments[b.seg as usize].pool {
            PoolKind::Small => remaining >= MIN_BLOCK_SIZE,
            PoolKind::Large => rounded < cfg.max_split_size && remaining > SMALL_SIZE,
        }
    }

    /// Hand out free block `i` (already out of the free set) for `req` from its start,
    /// splitting off the remainder when worth it.
    pub(super) fn take_block(
        &mut self,
        i: u32,
        req: &Request,
        cfg: &Config,
        pool: PoolKind,
    ) -> BlockId {
        self.inactive_split_account(i, false);
        if self.should_split(i, req.rounded, cfg) {
            let at = self.blocks[i as usize].addr + req.rounded;
            let rest = self.split_at(i, at, true);
            self.insert_free(rest);
            self.inactive_split_account(rest, true);
        }
        self.hand_out(i, req, cfg, pool)
    }

    /// [`Self::take_block`] at address `at` inside free block `i` of an expandable segment
    /// (of either pool): what lies before `at` stays free as its own block.
    pub(super) fn take_block_at(
        &mut self,
        i: u32,
        req: &Request,
        cfg: &Config,
        at: u64,
    ) -> BlockId {
        let (addr, size, seg) = {
            let b = &self.blocks[i as usize];
            (b.addr, b.size, b.seg)
        };
        debug_assert!(at >= addr && at + req.rounded <= addr + size);
        let pool = self.segments[seg as usize].pool;
        if at == addr {
            return self.take_block(i, req, cfg, pool);
        }
        debug_assert!(self.segments[seg as usize].expandable);
        let t = self.split_at(i, at, true);
        self.insert_free(i);
        self.take_block(t, req, cfg, pool)
    }

    /// Mark block `i` (out of the free set, already at its final size, in a segment of
    /// `pool`) allocated for `req`.
    pub(super) fn hand_out(
        &mut self,
        i: u32,
        req: &Request,
        cfg: &Config,
        pool: PoolKind,
    ) -> BlockId {
        let b = &mut self.blocks[i as usize];
        b.state = BlockState::Allocated;
        b.requested = req.requested;
        let size = b.size;
        let st = &mut self.stats;
        stats::increase(&mut st.allocation, pool, 1);
        stats::increase(&mut st.allocated_bytes, pool, size);
        stats::increase(&mut st.active, pool, 1);
        stats::increase(&mut st.active_bytes, pool, size);
        stats::increase(&mut st.requested_bytes, pool, req.requested);
        if size >= cfg.max_split_size {
            st.oversize_allocations.increase(1);
        }
        BlockId(i)
    }

    /// Serve `req` from the cache, if a cached block fits: the parked block if `req` takes
    /// it back (see `retake`), else in the expandable segments where
    /// [`Self::find_free_paged`] places it, else by best fit under the `max_split_size`
    /// rules.
    #[inline]
    pub fn try_alloc(&mut self, req: &Request, cfg: &Config) -> Option<BlockId> {
        if let Some(b) = self.retake(req, cfg) {
            return Some(b);
        }
        // The last take ends here (no park is left): its cycles are booked before
        // anything moves.
        self.settle();
        self.lookups[req.pool.idx()] += 1;
        let b = if (self.expandable[0].is_some() || self.expandable[1].is_some())
            && let Some((i, at)) = self.find_free_paged(req)
        {
            self.remove_free(i);
            self.take_block_at(i, req, cfg, at)
        } else {
            let i = self.find_free_fixed(req, cfg)?;
            self.remove_free(i);
            self.take_block(i, req, cfg, req.pool)
        };
        let oversize = self.blocks[b.0 as usize].size >= cfg.max_split_size;
        self.remember_take(b.0, req.rounded, oversize);
        Some(b)
    }

    /// Adopt a new segment from the driver and serve `req` from it.
    pub fn add_segment_and_alloc(
        &mut self,
        addr: u64,
        size: u64,
        req: &Request,
        cfg: &Config,
    ) -> BlockId {
        self.structural_change();
        let i = self.new_segment(addr, size, req.pool, false);
        self.take_block(i, req, cfg, req.pool)
    }
}
