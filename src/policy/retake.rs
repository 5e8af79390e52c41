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
        allowed: false,
    };
}

impl StreamPools {
    /// Remember block `i`, just taken from the cache for a request of `rounded` bytes.
    #[inline]
    pub(super) fn remember_take(&mut self, i: u32, rounded: u64) {
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
            allowed: self.last_take.allowed,
        };
    }

    /// The free index changed: the last take can no longer be replayed.
    #[inline]
    pub(super) fn forget_take(&mut self) {
        debug_assert!(!self.last_take.parked, "free index changed under a park");
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
        }
    }

    #[cold]
    fn settle_parked(&mut self) {
        let i = self.last_take.block;
        self.last_take.parked = false;
        self.last_take.block = NIL;
        self.coalesce(i);
    }

    /// Serve `req` by taking the parked block back, if it is parked and `req` has its
    /// rounded size; otherwise settle the park (if any) and answer `None`. Counts the
    /// lookup on a take, as [`StreamPools::try_alloc`] does.
    #[inline]
    pub(super) fn retake(&mut self, req: &Request, cfg: &Config) -> Option<BlockId> {
        if !self.last_take.parked {
            return None;
        }
        if self.last_take.rounded != req.rounded {
            self.settle_parked();
            return None;
        }
        let t = self.last_take;
        self.last_take.parked = false;
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
