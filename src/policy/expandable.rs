//! Expandable segments: one reserved address range per pool whose pages are mapped as
//! needed — page-aware placement of requests, planning and committing maps and unmaps.
//! It never calls the driver: it plans, the front maps, then it commits.

use super::*;

/// How many free blocks, smallest first, the page-aware placement of expandable segments
/// looks at before it settles for the best seen.
pub const PLACEMENT_CANDIDATES: usize = 64;

/// A range of an expandable segment to map (from [`StreamPools::plan_map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapPlan {
    /// Start (page-aligned).
    pub addr: u64,
    /// Length (whole pages).
    pub len: u64,
    /// The free mapped blocks the new pages join (before, after; `NIL` if none): they serve
    /// the request with them, so they are not unmapped to make room.
    joins: [u32; 2],
}

/// A range of free pages to unmap (from [`StreamPools::plan_unmap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmapPlan {
    pub(super) block: u32,
    /// Pool of the segment.
    pub pool: PoolKind,
    /// Start (page-aligned).
    pub addr: u64,
    /// Length (whole pages).
    pub len: u64,
}

impl StreamPools {
    /// How many pages of `[a, a + r)` no live block touches, for a placement inside the
    /// free mapped block `[s, e)` of an expandable segment. A free mapped block that starts
    /// or ends inside a page shares that page with the allocated block next to it (unmapped
    /// ranges are whole pages), so a placement reaching into it costs no page.
    pub(super) fn new_pages(&self, s: u64, e: u64, a: u64, r: u64) -> u64 {
        let (sh, mask) = (self.page_shift, self.granularity - 1);
        let (first, last) = (a >> sh, (a + r - 1) >> sh);
        let shared_first = s & mask != 0 && first == s >> sh;
        let shared_last = e & mask != 0 && last == (e - 1) >> sh;
        let mut n = last - first + 1;
        if shared_first {
            n -= 1;
        }
        if shared_last && !(shared_first && first == last) {
            n -= 1;
        }
        n
    }

    /// Page-aware placement in the expandable segments. Fixed segments waste what their
    /// blocks leave free; an expandable segment's fully free pages go back to the driver, so
    /// what it wastes is the free bytes of pages that live blocks still touch. The request
    /// therefore goes where it touches the fewest pages no live block uses; then, if it is
    /// a whole number of pages, where it spans no more pages than that (aligned, it pins no
    /// extra page once its neighbours are freed; other sizes pack best end to end); then
    /// into the smaller free block, then at the lower address. It is placed at the start or
    /// the end of a free block, or at its first or last page boundary; the scan, smallest
    /// blocks first, stops at the first placement that costs no page or after
    /// [`PLACEMENT_CANDIDATES`] blocks. When the request's own pool can only place it on an
    /// untouched page, a placement that costs none in the other pool's expandable segment
    /// is taken instead: both pools map the same pages, and the block then counts in the
    /// pool of the segment that holds it. Returns the block and the address to place at.
    pub(super) fn find_free_paged(&self, req: &Request) -> Option<(u32, u64)> {
        self.find_free_paged_with(req, true)
    }

    /// [`Self::find_free_paged`]; without `shortcuts`, by the plain scan alone (the tests
    /// check that both answer the same).
    pub(super) fn find_free_paged_with(
        &self,
        req: &Request,
        shortcuts: bool,
    ) -> Option<(u32, u64)> {
        let own = self.find_free_paged_in(req, req.pool, shortcuts);
        if own.is_none_or(|(n, _, _)| n > 0)
            && (!shortcuts
                || (self.fewest_new_pages(req.rounded) == 0
                    && self.partial_free[req.pool.other().idx()] > 0))
            && let Some((0, i, at)) = self.find_free_paged_in(req, req.pool.other(), shortcuts)
        {
            return Some((i, at));
        }
        own.map(|(_, i, at)| (i, at))
    }

    /// The fewest new pages any placement of `r` bytes can cost: it spans at least
    /// `ceil(r / g)` pages, of which at most its first and last can be shared with live
    /// neighbours. Above two pages no placement is free, so the other pool is not searched
    /// for one, and a large-pool scan that reaches this bound can stop.
    #[inline]
    pub(super) fn fewest_new_pages(&self, r: u64) -> u64 {
        let span = (r + self.granularity - 1) >> self.page_shift;
        span.saturating_sub(2)
    }

    /// For a request of whole pages, the pages `[a, a + r)` spans (one more than it needs
    /// unless aligned: such a block then keeps a page mapped for its neighbours' sake after
    /// they are freed); 0 for other sizes, whose blocks pack best end to end.
    pub(super) fn aligned_span(&self, a: u64, r: u64) -> u64 {
        let sh = self.page_shift;
        if r & (self.granularity - 1) == 0 {
            ((a + r - 1) >> sh) - (a >> sh) + 1
        } else {
            0
        }
    }

    /// Where `r` bytes may go inside the free block `[s, e)`: its start, its end, and its
    /// first and last page boundaries.
    pub(super) fn placements(&self, s: u64, e: u64, r: u64) -> [Option<u64>; 4] {
        let mask = self.granularity - 1;
        let up = (s + mask) & !mask;
        let down = e & !mask;
        [
            Some(s),
            Some(e - r),
            (up + r <= e).then_some(up),
            (down >= s + r).then(|| down - r),
        ]
    }

    /// [`Self::find_free_paged`] within the expandable segment of `pool`: (new pages, block,
    /// address).
    pub(super) fn find_free_paged_in(
        &self,
        req: &Request,
        pool: PoolKind,
        shortcuts: bool,
    ) -> Option<(u64, u32, u64)> {
        let r = req.rounded;
        let seg = self.expandable[pool.idx()]?;
        if shortcuts
            && self.partial_free[pool.idx()] == 0
            && let Some(found) = self.whole_pages_fit(seg, r, pool)
        {
            return Some(found);
        }
        // The large pool's free blocks come in (size, address) order, so once the best seen
        // costs the fewest pages possible (spanning the fewest pages, for whole-page
        // requests), no later block can beat it: it is bigger, or as big and higher. (The
        // small pool's last list is in address order only; its requests are below a page,
        // where the bound is 0 and the scan stops at the first free placement anyway.)
        let bound = self.fewest_new_pages(r);
        let whole = r & (self.granularity - 1) == 0;
        let good_enough = |k: &(u64, u64, u64, u64)| {
            k.0 == 0
                || (shortcuts
                    && pool == PoolKind::Large
                    && k.0 <= bound
                    && (!whole || k.1 == r >> self.page_shift))
        };
        let mut best: Option<((u64, u64, u64, u64), u32)> = None;
        let mut consider = |i: u32| -> bool {
            let b = &self.blocks[i as usize];
            if b.seg != seg || b.size < r {
                return false;
            }
            let (s, e) = (b.addr, b.addr + b.size);
            for a in self.placements(s, e, r).into_iter().flatten() {
                let key = (
                    self.new_pages(s, e, a, r),
                    self.aligned_span(a, r),
                    b.size,
                    a,
                );
                if best.is_none_or(|(k, _)| key < k) {
                    best = Some((key, i));
                }
            }
            best.is_some_and(|(k, _)| good_enough(&k))
        };
        let limit = PLACEMENT_CANDIDATES;
        match pool {
            PoolKind::Small => {
                for i in self.small.at_least(r).take(limit) {
                    if consider(i) {
                        break;
                    }
                }
            }
            PoolKind::Large => {
                for &(_, _, i) in self.large.at_least(r).take(limit) {
                    if consider(i) {
                        break;
                    }
                }
            }
        }
        best.map(|(k, i)| (k.0, i, k.3))
    }

    /// The scan's answer when every free block of `pool` is whole pages: no page is shared,
    /// so a placement costs every page it spans, and the fewest is had at the start of a
    /// block (aligned); among those the smallest block wins, then the lowest address: the
    /// first fitting block, when the free index lists blocks in (size, address) order.
    /// `None` when that order does not hold or the block is not in segment `seg`.
    #[inline]
    fn whole_pages_fit(&self, seg: u32, r: u64, pool: PoolKind) -> Option<(u64, u32, u64)> {
        let i = match pool {
            PoolKind::Small => self.small.first_fit_sorted(r)?,
            PoolKind::Large => self.large.first_at_least(r)?.2,
        };
        let b = &self.blocks[i as usize];
        if b.seg != seg {
            return None;
        }
        debug_assert!(b.size >= r && !self.is_partial(i));
        Some((
            self.new_pages(b.addr, b.addr + b.size, b.addr, r),
            i,
            b.addr,
        ))
    }

    #[inline]
    pub(super) fn in_expandable(&self, i: u32) -> bool {
        self.segments[self.blocks[i as usize].seg as usize].expandable
    }

    /// Bytes mapped in this stream's expandable segments.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes
    }

    /// The expandable segment of `pool`, as (address, reserved size), if there is one.
    pub fn expandable_segment(&self, pool: PoolKind) -> Option<(u64, u64)> {
        self.expandable[pool.idx()].map(|s| {
            let seg = &self.segments[s as usize];
            (seg.addr, seg.size)
        })
    }

    /// Adopt a reserved address range as the expandable segment of `pool` (nothing mapped).
    pub fn add_expandable_segment(
        &mut self,
        addr: u64,
        size: u64,
        pool: PoolKind,
        granularity: u64,
    ) {
        self.structural_change();
        assert!(
            granularity.is_power_of_two(),
            "the page size of expandable segments is a power of two"
        );
        self.granularity = granularity;
        self.page_shift = granularity.trailing_zeros();
        let i = self.new_segment(addr, size, pool, true);
        self.unmapped[pool.idx()].insert((addr, i));
        self.expandable[pool.idx()] = Some(self.blocks[i as usize].seg);
    }

    /// Where to map pages so that `req` fits in the expandable segment of its pool: the
    /// lowest unmapped range that, with the free mapped block just before it, covers the
    /// request. `None` when the segment is missing or has no such room.
    pub fn plan_map(&self, req: &Request, granularity: u64) -> Option<MapPlan> {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        // For each unmapped range, the pages needed when the new pages join the free space
        // just before it, just after it, or both (filling the whole range); the plan maps
        // the fewest pages, ties going to the lowest address, so free pieces of partly used
        // pages are put to use before new memory is.
        let pages = |bytes: u64| bytes.max(1).div_ceil(granularity) * granularity;
        let mut best: Option<MapPlan> = None;
        for &(addr, u) in &self.unmapped[req.pool.idx()] {
            let b = &self.blocks[u as usize];
            let side = |i: u32| {
                if i != NIL && self.is_mapped_free(i) {
                    self.blocks[i as usize].size
                } else {
                    0
                }
            };
            let (before, after) = (side(b.prev), side(b.next));
            let joined = |i: u32, bytes: u64| if bytes > 0 { i } else { NIL };
            let (jb, ja) = (joined(b.prev, before), joined(b.next, after));
            let r = req.rounded;
            let mut options = Vec::with_capacity(3);
            let front = pages(r.saturating_sub(before));
            if front <= b.size {
                options.push(MapPlan {
                    addr,
                    len: front,
                    joins: [jb, NIL],
                });
            }
            let back = pages(r.saturating_sub(after));
            if back <= b.size {
                options.push(MapPlan {
                    addr: addr + b.size - back,
                    len: back,
                    joins: [NIL, ja],
                });
            }
            if before + b.size + after >= r {
                options.push(MapPlan {
                    addr,
                    len: b.size,
                    joins: [jb, ja],
                });
            }
            for o in options {
                if best.is_none_or(|x| o.len < x.len) {
                    best = Some(o);
                }
            }
        }
        best
    }

    /// Merge mapped free block `i` (not in the free set) with its mapped free neighbours
    /// (taken out of the free set); returns the surviving block, not in the free set.
    pub(super) fn merge_mapped_free(&mut self, mut i: u32) -> u32 {
        let prev = self.blocks[i as usize].prev;
        if prev != NIL && self.is_mapped_free(prev) {
            self.inactive_split_account(prev, false);
            self.remove_free(prev);
            self.merge_next(prev);
            i = prev;
        }
        let next = self.blocks[i as usize].next;
        if next != NIL && self.is_mapped_free(next) {
            self.inactive_split_account(next, false);
            self.remove_free(next);
            self.merge_next(i);
        }
        i
    }

    /// `plan` with up to `extra` bytes (whole pages) more mapped after it, as far as its
    /// unmapped range reaches, when nothing mapped follows it (the request is served from
    /// the start of the joined space, so the pages added stay free after it).
    pub fn extend_plan(&self, plan: MapPlan, pool: PoolKind, extra: u64) -> MapPlan {
        if plan.joins[1] != NIL || extra == 0 {
            return plan;
        }
        let Some(&(start, u)) = self.unmapped[pool.idx()]
            .range(..=(plan.addr, u32::MAX))
            .next_back()
        else {
            return plan;
        };
        let end = start + self.blocks[u as usize].size;
        let len = (plan.len + extra).min(end - plan.addr);
        MapPlan { len, ..plan }
    }

    /// The pages of `plan` were mapped: they join the free space before them, and `req` is
    /// served from it.
    pub fn commit_map(&mut self, plan: MapPlan, req: &Request, cfg: &Config) -> BlockId {
        self.structural_change();
        let p = req.pool.idx();
        let &(start, u) = self.unmapped[p]
            .range(..=(plan.addr, u32::MAX))
            .next_back()
            .expect("plan_map names an unmapped range");
        self.unmapped[p].remove(&(start, u));
        let size = self.blocks[u as usize].size;
        debug_assert!(plan.addr >= start && plan.addr + plan.len <= start + size);
        // Carve [plan.addr, plan.addr + len) out of `u`; what is left on either side stays
        // unmapped.
        let mut m = u;
        if plan.addr > start {
            m = self.split_at(u, plan.addr, false);
            self.unmapped[p].insert((start, u));
        }
        if plan.len < self.blocks[m as usize].size {
            let rest = self.split_at(m, plan.addr + plan.len, false);
            self.unmapped[p].insert((plan.addr + plan.len, rest));
        }
        self.blocks[m as usize].mapped = true;
        self.mapped_bytes += plan.len;
        let i = self.merge_mapped_free(m);
        self.take_block(i, req, cfg, req.pool)
    }

    /// Free pages of this stream's expandable segments that could be unmapped: the whole
    /// pages inside each free mapped block.
    pub fn plan_unmap(&self, granularity: u64) -> Vec<UnmapPlan> {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        let mut out = Vec::new();
        for s in self.expandable.iter().flatten() {
            let pool = self.segments[*s as usize].pool;
            let mut i = self.segments[*s as usize].head;
            while i != NIL {
                let b = &self.blocks[i as usize];
                if b.mapped && b.state == BlockState::Free {
                    let start = b.addr.div_ceil(granularity) * granularity;
                    let end = (b.addr + b.size) / granularity * granularity;
                    if end > start {
                        out.push(UnmapPlan {
                            block: i,
                            pool,
                            addr: start,
                            len: end - start,
                        });
                    }
                }
                i = b.next;
            }
        }
        out
    }

    /// Whole free pages, `need` bytes of them (all if they add up to less), to unmap before
    /// the pages of `plan` are mapped, so that the device's reserved bytes grow only by what
    /// free pages cannot offset (the front decides `need`). Unmapping more would only make
    /// later requests map them again, a driver call each. The blocks the plan joins are
    /// kept; the largest runs go first (fewest calls), the last one cut to what is needed,
    /// from its top.
    pub fn plan_unmap_for(&self, plan: &MapPlan, need: u64, granularity: u64) -> Vec<UnmapPlan> {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        if need == 0 {
            return Vec::new();
        }
        let mut runs = self.plan_unmap(granularity);
        runs.retain(|u| !plan.joins.contains(&u.block));
        Self::take_pages(runs, need)
    }

    /// Whole free pages, about `need` bytes of them (all if they add up to less), to unmap
    /// when another stream of the device grows by `need`: the largest runs first, the last
    /// one cut from its top.
    pub fn plan_unmap_upto(&self, need: u64, granularity: u64) -> Vec<UnmapPlan> {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        Self::take_pages(self.plan_unmap(granularity), need)
    }

    fn take_pages(mut runs: Vec<UnmapPlan>, mut need: u64) -> Vec<UnmapPlan> {
        let total: u64 = runs.iter().map(|u| u.len).sum();
        if total <= need {
            return runs;
        }
        runs.sort_by_key(|u| std::cmp::Reverse((u.len, u.addr)));
        let mut out = Vec::new();
        for mut u in runs {
            if need == 0 {
                break;
            }
            if u.len > need {
                u.addr += u.len - need;
                u.len = need;
            }
            need -= u.len;
            out.push(u);
        }
        out
    }

    /// The pages of `plan` were unmapped: they become unmapped address space.
    pub fn commit_unmap(&mut self, plan: UnmapPlan) {
        self.structural_change();
        let b = plan.block;
        let (addr, size, seg) = {
            let x = &self.blocks[b as usize];
            (x.addr, x.size, x.seg)
        };
        debug_assert!(self.is_mapped_free(b) && addr <= plan.addr);
        let pool = self.segments[seg as usize].pool;
        self.remove_free(b);
        let end = plan.addr + plan.len;
        // [addr, plan.addr) stays mapped free (in `b`), the pages become `u`, the tail `q`.
        let u = if plan.addr > addr {
            let u = self.split_at(b, plan.addr, false);
            self.insert_free(b);
            u
        } else {
            self.blocks[b as usize].mapped = false;
            b
        };
        if end < addr + size {
            let q = self.split_at(u, end, true);
            self.insert_free(q);
        }
        self.mapped_bytes -= plan.len;
        // Coalesce with unmapped neighbours.
        let p = pool.idx();
        let mut u = u;
        let prev = self.blocks[u as usize].prev;
        if prev != NIL && !self.blocks[prev as usize].mapped {
            self.merge_next(prev);
            u = prev;
        } else {
            self.unmapped[p].insert((self.blocks[u as usize].addr, u));
        }
        let next = self.blocks[u as usize].next;
        if next != NIL && !self.blocks[next as usize].mapped {
            let naddr = self.blocks[next as usize].addr;
            self.unmapped[p].remove(&(naddr, next));
            self.merge_next(u);
        }
    }

    /// Expandable segments with nothing mapped any more: forgotten here, returned for the
    /// front to give their address range back.
    pub fn release_empty_expandable(&mut self, out: &mut Vec<ReleasedSegment>) {
        self.structural_change();
        for p in 0..2 {
            let Some(s) = self.expandable[p] else {
                continue;
            };
            let head = self.segments[s as usize].head;
            let b = &self.blocks[head as usize];
            if b.next == NIL && !b.mapped {
                let addr = b.addr;
                self.unmapped[p].remove(&(addr, head));
                self.drop_block(head);
                let seg = &mut self.segments[s as usize];
                seg.live = false;
                out.push(ReleasedSegment {
                    addr: seg.addr,
                    size: seg.size,
                    pool: seg.pool,
                    stream: self.stream,
                });
                self.spare_segments.push(s);
                self.live_segments -= 1;
                self.expandable[p] = None;
            }
        }
    }

    /// Every mapped page range of the expandable segments (for teardown).
    pub fn mapped_runs(&self) -> Vec<(u64, u64)> {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        self.segments()
            .into_iter()
            .filter(|s| s.expandable)
            .map(|s| (s.addr, s.size))
            .collect()
    }
}
