//! Taking the same block straight back: the commonest cached pattern in eager PyTorch is a
//! tensor freed and the next one of the same rounded size allocated on the same stream
//! (in the `hotpath` size mix of a GPT-2 run, 52 % of consecutive requests; 76 % in the
//! `large` mix). Coalescing the freed block with its free neighbours and splitting the
//! same block off again costs two removals and two insertions in the free index, a merge
//! and a split, and leaves everything as it was.
//!
//! So the last block [`StreamPools::try_alloc`] took from the cache is remembered, as long
//! as the free index is exactly as that take left it (every insertion into or removal from
//! it forgets the take). When that block is freed, it is *parked*: its statistics are
//! booked as in any free, but it is not coalesced. A request of the same rounded size
//! then takes it back at once. Anything else first *settles* the park — the coalescing
//! that was put off, done exactly as it would have been at the free.
//!
//! Why taking it back is exact: with the index unchanged since the take, coalescing the
//! block would rebuild the free block it was cut from (no two free neighbours, so its free
//! neighbours are the pieces the take left), i.e. the state the take started from, up to
//! block ids and the GC age of that one free block, which placement does not read. The
//! same rounded request from that state is placed the same way. What does differ — the
//! lookup counter and the GC age of the pieces left beside the block — is set as the
//! full path would set it.
//!
//! Booking a cycle costs nothing either (`examples/pairs`, one size: about 250 of a pair's
//! 525 instructions under callgrind were statistics). Every statistic a free followed by
//! the same take moves comes back to the value it had, except `requested_bytes` (the new
//! request may differ from the old one), the running totals (`allocated`, `freed`) and the
//! peaks of `inactive_split`, which the replayed coalescing passes through. So a free that
//! parks books nothing; taking the block back books `requested_bytes` and counts the
//! cycle; the cycles' totals and peaks are booked together, in closed form, when the take
//! ends — at the next request it does not serve, at any other free, or at a settle (every
//! lock but the cached malloc's and free's settles, so statistics are never read with
//! cycles unbooked). A park the free did not book (`deferred`) books that free when it is
//! settled.
//!
//! A parked block is `Free` but in no free index: only `try_alloc`, `free` (and
//! `return_block`), `record_stream` and the block accessors may run with a park in place;
//! every other operation settles first. The front settles when it locks a stream's pools
//! for anything but the cached malloc and free. This file must not choose placements: it
//! only replays the one the last take chose.

use super::*;

/// The last block [`StreamPools::try_alloc`] took from the cache (`block == NIL`: none, or
/// the free index changed since).
#[derive(Debug, Clone, Copy)]
pub(super) struct LastTake {
    pub(super) block: u32,
    /// The free piece left before it (cut off by a page-aware placement), or `NIL`.
    pub(super) left: u32,
    /// The free remainder after it, or `NIL`.
    pub(super) rest: u32,
    /// Rounded size of the request it served (placement depends on nothing else of a
    /// request: the pool follows from it).
    pub(super) rounded: u64,
    /// Pool its statistics are booked in (its segment's).
    pub(super) pool: PoolKind,
    /// Freed, and not coalesced yet.
    pub(super) parked: bool,
    /// The park's free is not booked in the statistics yet (a park made by
    /// [`StreamPools::free`] itself; one made after waiting on events was booked).
    pub(super) deferred: bool,
    /// Cycles of a booked-nothing free and a retake since the take, whose totals and
    /// peaks are not booked yet.
    pub(super) cycles: u64,
    /// The block is at least `max_split_size` (counted in `oversize_allocations`).
    pub(super) oversize: bool,
    /// Whether frees may park at all ([`StreamPools::allow_parking`]).
    pub(super) allowed: bool,
}

impl LastTake {
    pub(super) const NONE: LastTake = LastTake {
        block: NIL,
        left: NIL,
        rest: NIL,
        rounded: 0,
        pool: PoolKind::Small,
        parked: false,
        deferred: false,
        cycles: 0,
        oversize: false,
        allowed: false,
    };
}

impl StreamPools {
    /// Remember block `i`, just taken from the cache for a request of `rounded` bytes
    /// (`oversize`: it counts as an oversize allocation).
    #[inline]
    pub(super) fn remember_take(&mut self, i: u32, rounded: u64, oversize: bool) {
        debug_assert_eq!(
            self.last_take.cycles, 0,
            "a take replaced with cycles unbooked"
        );
        let b = &self.blocks[i as usize];
        let piece = |j: u32| {
            if j != NIL && self.is_mapped_free(j) {
                j
            } else {
                NIL
            }
        };
        self.last_take = LastTake {
            block: i,
            left: piece(b.prev),
            rest: piece(b.next),
            rounded,
            pool: self.segments[b.seg as usize].pool,
            parked: false,
            deferred: false,
            cycles: 0,
            oversize,
            allowed: self.last_take.allowed,
        };
    }

    /// The free index changed: the last take can no longer be replayed.
    #[inline]
    pub(super) fn forget_take(&mut self) {
        debug_assert!(!self.last_take.parked, "free index changed under a park");
        debug_assert_eq!(
            self.last_take.cycles, 0,
            "free index changed, cycles unbooked"
        );
        self.last_take.block = NIL;
    }

    /// Something other than a cached malloc or free changes the pools: settle a park and
    /// forget the last take.
    #[inline]
    pub(super) fn structural_change(&mut self) {
        self.settle();
        self.forget_take();
    }

    /// Let frees of the last take park from now on. Off by default: a caller that turns
    /// it on settles ([`StreamPools::settle`]) before it looks at the free space or changes
    /// the pools other than by `try_alloc`, `free` and `record_stream`.
    pub fn allow_parking(&mut self) {
        self.last_take.allowed = true;
    }

    /// Whether a freed block waits, parked, to be coalesced (see the module docs).
    #[inline]
    pub fn is_parked(&self) -> bool {
        self.last_take.parked
    }

    /// Whether [`StreamPools::settle`] has anything to do: a park, or cycles whose
    /// statistics are not booked yet.
    #[inline]
    pub fn is_unsettled(&self) -> bool {
        self.last_take.parked || self.last_take.cycles != 0
    }

    /// Allocated block `i`, freed by the caller with nothing to wait for, is the last take:
    /// park it without booking anything (see the module docs). `false`: it is not, nothing
    /// done.
    #[inline]
    pub(super) fn park_unbooked(&mut self, i: u32) -> bool {
        let t = &self.last_take;
        if t.block != i || t.parked || !t.allowed || self.blocks[i as usize].uses != NIL {
            return false;
        }
        self.last_take.parked = true;
        self.last_take.deferred = true;
        self.blocks[i as usize].state = BlockState::Free;
        true
    }

    /// Block `i`, no longer used by anyone and its statistics booked, is the last take:
    /// park it instead of coalescing it. `false`: it is not, nothing done.
    #[inline]
    pub(super) fn park(&mut self, i: u32) -> bool {
        if self.last_take.block != i || self.last_take.parked || !self.last_take.allowed {
            return false;
        }
        self.last_take.parked = true;
        self.blocks[i as usize].state = BlockState::Free;
        true
    }

    /// Do the coalescing a park put off, as the free would have done it: afterwards the
    /// pools are as if the block had been returned the ordinary way. Cheap when nothing is
    /// parked.
    #[inline]
    pub fn settle(&mut self) {
        if self.last_take.parked {
            self.settle_parked();
        } else if self.last_take.cycles != 0 {
            self.book_cycles();
        }
    }

    #[cold]
    fn settle_parked(&mut self) {
        let i = self.last_take.block;
        self.unpark(true);
        self.last_take.block = NIL;
        self.coalesce(i);
    }

    /// End the park as a settle does, before the parked block is coalesced or cut again:
    /// its put-off free booked (if `book_free`; a caller that books it together with the
    /// next take passes `false`) and the take's cycles booked.
    pub(super) fn unpark(&mut self, book_free: bool) {
        if book_free && self.last_take.deferred {
            self.book_deferred_free(self.last_take.block);
        }
        self.book_cycles();
        self.last_take.parked = false;
        self.last_take.deferred = false;
    }

    /// Book the free a park put off: what [`StreamPools::free`] and `return_block` book.
    pub(super) fn book_deferred_free(&mut self, i: u32) {
        let (pool, oversize) = (self.last_take.pool, self.last_take.oversize);
        self.book_caller_free(pool, self.blocks[i as usize].size, oversize);
        self.book_return(i, pool);
    }

    /// Book the statistics of the take's unbooked cycles: each is a free of the block (its
    /// coalescing replayed) and the same take, as [`Self::replay_split_accounting`] and
    /// [`Self::hand_out`] would book it, less `requested_bytes` (booked at each retake).
    /// All of them come back to their `current`: only the totals and the peaks the
    /// replayed coalescing passes through move, the same in every cycle, so `n` cycles are
    /// booked at once.
    #[cold]
    pub(super) fn book_cycles(&mut self) {
        let t = self.last_take;
        let n = t.cycles;
        if n == 0 {
            return;
        }
        self.last_take.cycles = 0;
        let b = self.blocks[t.block as usize];
        let seg = &self.segments[b.seg as usize];
        let (pool, expandable) = (t.pool, seg.expandable);
        let split = (!expandable).then(|| self.split_replay(&t));
        let st = &mut self.stats;
        stats::cycle(&mut st.allocation, pool, n);
        stats::cycle(&mut st.allocated_bytes, pool, n * b.size);
        stats::cycle(&mut st.active, pool, n);
        stats::cycle(&mut st.active_bytes, pool, n * b.size);
        if t.oversize {
            st.oversize_allocations.cycle(n);
        }
        let Some(r) = split else { return };
        stats::cycle(&mut st.inactive_split, pool, n * r.blocks_moved);
        stats::cycle(&mut st.inactive_split_bytes, pool, n * r.bytes_moved);
        if r.whole_split {
            // The rebuilt block in, its pieces out: the highest the replay goes.
            for k in [0, pool.stat_index()] {
                let c = &mut st.inactive_split[k];
                c.peak_at_least(c.current + 1 - r.pieces as i64);
                let c = &mut st.inactive_split_bytes[k];
                c.peak_at_least(c.current + b.size as i64);
            }
        }
    }

    /// What one replayed coalescing of the take's block moves in `inactive_split`.
    fn split_replay(&self, t: &LastTake) -> SplitReplay {
        let b = &self.blocks[t.block as usize];
        let size = |j: u32| {
            if j == NIL {
                0
            } else {
                self.blocks[j as usize].size
            }
        };
        let first = if t.left == NIL { t.block } else { t.left };
        let last = if t.rest == NIL { t.block } else { t.rest };
        let whole_split =
            self.blocks[first as usize].prev != NIL || self.blocks[last as usize].next != NIL;
        let pieces = u64::from(t.left != NIL) + u64::from(t.rest != NIL);
        let piece_bytes = size(t.left) + size(t.rest);
        let whole = piece_bytes + b.size;
        SplitReplay {
            whole_split,
            pieces,
            // Each piece out and back; the rebuilt block in and out if it is split.
            blocks_moved: pieces + u64::from(whole_split),
            bytes_moved: piece_bytes + if whole_split { whole } else { 0 },
        }
    }

    /// Serve `req` by taking the parked block back, if it is parked and `req` has its
    /// rounded size, or by cutting its free space again where that placement is forced
    /// (`recut`); otherwise settle the park (if any) and answer `None`. Counts the
    /// lookup on a take, as [`StreamPools::try_alloc`] does.
    #[inline]
    pub(super) fn retake(&mut self, req: &Request, cfg: &Config) -> Option<BlockId> {
        if !self.last_take.parked {
            return None;
        }
        if self.last_take.rounded != req.rounded {
            if let Some(b) = self.recut(req, cfg) {
                return Some(b);
            }
            self.settle_parked();
            return None;
        }
        let t = self.last_take;
        self.last_take.parked = false;
        if t.deferred {
            return Some(self.retake_unbooked(t, req));
        }
        self.lookups[req.pool.idx()] += 1;
        // The full path would have put the pieces beside the block back into the free
        // index now, their GC age starting at this lookup.
        let now = self.lookups[t.pool.idx()];
        for j in [t.left, t.rest] {
            if j != NIL {
                self.blocks[j as usize].gc_base = now;
            }
        }
        self.replay_split_accounting(&t);
        Some(self.hand_out(t.block, req, cfg, t.pool))
    }

    /// Take back a block parked by a free that booked nothing: count the cycle, book what
    /// differs from the last take (`requested_bytes`) and the lookup.
    #[inline]
    fn retake_unbooked(&mut self, t: LastTake, req: &Request) -> BlockId {
        self.last_take.deferred = false;
        self.last_take.cycles += 1;
        self.lookups[req.pool.idx()] += 1;
        let now = self.lookups[t.pool.idx()];
        for j in [t.left, t.rest] {
            if j != NIL {
                self.blocks[j as usize].gc_base = now;
            }
        }
        let b = &mut self.blocks[t.block as usize];
        b.state = BlockState::Allocated;
        let old = std::mem::replace(&mut b.requested, req.requested);
        stats::swap(&mut self.stats.requested_bytes, t.pool, old, req.requested);
        BlockId(t.block)
    }

    /// The `inactive_split` statistics (fixed segments only) move on a free and a take:
    /// book what coalescing the parked block and cutting it off again would have booked, in
    /// the same order, so that totals and peaks come out the same.
    fn replay_split_accounting(&mut self, t: &LastTake) {
        let b = self.blocks[t.block as usize];
        let seg = &self.segments[b.seg as usize];
        if seg.expandable {
            return;
        }
        let pool = seg.pool;
        let size = |j: u32| {
            if j == NIL {
                0
            } else {
                self.blocks[j as usize].size
            }
        };
        let (left, rest) = (size(t.left), size(t.rest));
        let first = if t.left == NIL { t.block } else { t.left };
        let last = if t.rest == NIL { t.block } else { t.rest };
        let whole = left + b.size + rest;
        let whole_split =
            self.blocks[first as usize].prev != NIL || self.blocks[last as usize].next != NIL;
        let st = &mut self.stats;
        let mut book = |add: bool, bytes: u64| {
            if add {
                stats::increase(&mut st.inactive_split, pool, 1);
                stats::increase(&mut st.inactive_split_bytes, pool, bytes);
            } else {
                stats::decrease(&mut st.inactive_split, pool, 1);
                stats::decrease(&mut st.inactive_split_bytes, pool, bytes);
            }
        };
        // The free: the pieces leave the free set, the block they form joins it...
        for piece in [left, rest] {
            if piece != 0 {
                book(false, piece);
            }
        }
        if whole_split {
            book(true, whole);
            // ...and the take: it leaves again, the pieces come back.
            book(false, whole);
        }
        for piece in [left, rest] {
            if piece != 0 {
                book(true, piece);
            }
        }
    }
}

/// What one replayed coalescing of the last take moves in `inactive_split` (see
/// [`StreamPools::book_cycles`]).
struct SplitReplay {
    /// The block the pieces and the take form is itself split (so it counts while in).
    whole_split: bool,
    /// Free pieces beside the take (0 to 2).
    pieces: u64,
    /// Blocks booked in and out in one replay.
    blocks_moved: u64,
    /// Bytes booked in and out in one replay.
    bytes_moved: u64,
}
