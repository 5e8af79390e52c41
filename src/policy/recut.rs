//! Cutting the parked block's free space again for a request of another size, when the
//! placement is forced: the commonest cached pattern after a same-size retake (`retake`)
//! is a request of a different size on a stream whose only free space in the pool is the
//! parked block and the free piece after it (in the `hotpath` size mix of `examples/pairs`,
//! every settle that a request of another size caused).
//!
//! The full path would settle the park — merge the block with that piece, insert the
//! whole into the free index — then place the request, take the whole out of the index
//! again, split it, and insert the remainder: two insertions, two removals, a merge and a
//! split. When the whole is the pool's only free block, lies in the pool's expandable
//! segment and is whole pages, and the other pool has no placement to offer, the
//! page-aware placement ([`StreamPools::find_free_paged`]) can only answer "the whole, at
//! its start" (the `whole_pages_fit` shortcut, with one candidate). Then the block is
//! resized in place and the piece after it moved: one removal and one insertion, and the
//! pools end up exactly as the full path leaves them — same blocks (ids included), free
//! index, GC ages, lookup count and statistics.
//!
//! This file must not choose placements: it serves only requests whose placement is forced
//! as above and sends every other one down the full path.

use super::*;

impl StreamPools {
    /// Serve `req` (of another rounded size than the parked block's) from the parked block
    /// and the free piece after it, if the full path's placement is forced to their start;
    /// the park is then settled. `None`: nothing changed.
    #[inline(never)]
    pub(super) fn recut(&mut self, req: &Request, cfg: &Config) -> Option<BlockId> {
        let t = self.last_take;
        debug_assert!(t.parked);
        let pool = req.pool;
        if t.left != NIL || t.rest == NIL || t.pool != pool {
            return None;
        }
        let (p, rest) = (self.blocks[t.block as usize], self.blocks[t.rest as usize]);
        if !self.segments[p.seg as usize].expandable || self.expandable[pool.idx()] != Some(p.seg) {
            return None;
        }
        let only_piece = match pool {
            PoolKind::Small => self.small.len() == 1,
            PoolKind::Large => self.large.len() == 1,
        };
        let (start, end) = (p.addr, rest.addr + rest.size);
        let mask = self.granularity - 1;
        let r = req.rounded;
        // After the settle the whole is the pool's only free block, and it must be whole
        // pages (so no partial block is left in the pool and placement takes the first
        // fit at its start); it must fit; and the other pool must not be asked for a
        // placement that costs no page (it is only asked when the request can span two
        // pages or fewer and that pool has a partial free block).
        if !only_piece
            || (start | end) & mask != 0
            || end - start < r
            || (self.fewest_new_pages(r) == 0 && self.partial_free[pool.other().idx()] > 0)
        {
            return None;
        }
        // With the piece the pool's only free block, it is the only one counted partial.
        debug_assert_eq!(
            self.partial_free[pool.idx()],
            u32::from(self.is_partial(t.rest))
        );
        // The settle: the cycles booked, the piece out of the index (the whole never
        // enters it: the placement takes it straight out again). The put-off free, if
        // any, is booked with the take below.
        self.book_cycles();
        self.last_take.parked = false;
        self.last_take.deferred = false;
        self.remove_free(t.rest);
        // The placement's lookup, then the take: the whole from its start, the remainder
        // left free after it when worth keeping (expandable segments split at 512 bytes).
        self.lookups[pool.idx()] += 1;
        let i = t.block;
        let remaining = end - start - r;
        if remaining >= MIN_BLOCK_SIZE {
            self.blocks[i as usize].size = r;
            let b = &mut self.blocks[t.rest as usize];
            b.addr = start + r;
            b.size = remaining;
            self.insert_free(t.rest);
        } else {
            self.merge_next(i);
        }
        let b = if t.deferred {
            self.free_and_hand_out(i, p.size, t.oversize, req, cfg, pool)
        } else {
            self.hand_out(i, req, cfg, pool)
        };
        let oversize = self.blocks[i as usize].size >= cfg.max_split_size;
        self.remember_take(i, r, oversize);
        Some(b)
    }

    /// Book the put-off free of block `i` (of `old` size before the recut, `oversize` then)
    /// and hand it out again for `req` at its new size: what `book_deferred_free` and
    /// [`Self::hand_out`] book one after the other, in one step per statistic.
    fn free_and_hand_out(
        &mut self,
        i: u32,
        old: u64,
        was_oversize: bool,
        req: &Request,
        cfg: &Config,
        pool: PoolKind,
    ) -> BlockId {
        let b = &mut self.blocks[i as usize];
        b.state = BlockState::Allocated;
        let (size, old_req) = (b.size, std::mem::replace(&mut b.requested, req.requested));
        let st = &mut self.stats;
        stats::cycle(&mut st.allocation, pool, 1);
        stats::swap(&mut st.allocated_bytes, pool, old, size);
        stats::cycle(&mut st.active, pool, 1);
        stats::swap(&mut st.active_bytes, pool, old, size);
        stats::swap(&mut st.requested_bytes, pool, old_req, req.requested);
        match (was_oversize, size >= cfg.max_split_size) {
            (true, false) => st.oversize_allocations.decrease(1),
            (false, true) => st.oversize_allocations.increase(1),
            (true, true) => st.oversize_allocations.cycle(1),
            (false, false) => {}
        }
        BlockId(i)
    }
}
