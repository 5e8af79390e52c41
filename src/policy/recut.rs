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
//! In fixed segments (with no expandable segment on the stream) best fit is forced the same
//! way when the whole is the pool's only free block and the request fits it (the
//! `max_split_size` rules then always let it: see `recut_fixed`); there the merge and the
//! split are kept, with their `inactive_split` bookings, and only the whole's insertion
//! into the free index and its removal are saved.
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
        let only_piece = match pool {
            PoolKind::Small => self.small.len() == 1,
            PoolKind::Large => self.large.len() == 1,
        };
        if !self.segments[p.seg as usize].expandable {
            return self.recut_fixed(req, cfg, only_piece);
        }
        if self.expandable[pool.idx()] != Some(p.seg) {
            return None;
        }
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
        self.unpark(false);
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

    /// [`Self::recut`] in fixed segments, with no expandable segment on the stream (the
    /// full path then places by best fit alone, [`Self::find_free_fixed`]): the whole is
    /// the pool's only free block, so best fit takes it if it fits (the `max_split_size`
    /// rules let it, see below). Done as the full path does it, in the same order —
    /// the settle's merge and `inactive_split` bookings, the lookup, the take — less the
    /// whole's insertion into the free index and its removal from it.
    fn recut_fixed(&mut self, req: &Request, cfg: &Config, only_piece: bool) -> Option<BlockId> {
        let t = self.last_take;
        let r = req.rounded;
        let whole = self.blocks[t.block as usize].size + self.blocks[t.rest as usize].size;
        if !only_piece || self.expandable != [None, None] || whole < r {
            return None;
        }
        // The `max_split_size` rules of best fit pass: the take that cut the block from
        // the whole passed them, and split it, so its request was below `max_split_size`
        // (oversize takes are not split) and the whole is too; a request of at least
        // `max_split_size` would not fit it.
        debug_assert!(
            whole < cfg.max_split_size && r < cfg.max_split_size,
            "a split take from an oversize block"
        );
        let i = t.block;
        self.unpark(true);
        // The settle's coalescing (`merge_mapped_free`, then `coalesce`): the piece out,
        // merged, the whole booked as a free block.
        self.inactive_split_account(t.rest, false);
        self.remove_free(t.rest);
        self.merge_next(i);
        self.inactive_split_account(i, true);
        // The placement's lookup and the take, of the whole, out of no index.
        self.lookups[req.pool.idx()] += 1;
        let b = self.take_block(i, req, cfg, req.pool);
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
