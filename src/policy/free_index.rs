//! The free indexes of one stream: the large pool's free tree ([`FreeSet`]) and, with
//! `bins`, the small pool's size classes; inserting and removing a free block, and the
//! inactive-split accounting that goes with it. It does not choose blocks (see `fixed` and
//! `expandable`).

use super::*;

/// Free blocks of one pool, ordered by (size, address, id): best fit is the first entry at or
/// above the request.
///
/// A sentinel entry that sorts after every real one stays in the tree for its whole life:
/// without it the tree frees its root node whenever it empties and allocates it again on
/// the next insert, a heap allocation per call in the common one-free-block steady state.
#[derive(Debug)]
pub(super) struct FreeSet(BTreeSet<(u64, u64, u32)>);

const SENTINEL: (u64, u64, u32) = (u64::MAX, u64::MAX, NIL);

impl FreeSet {
    pub(super) fn new() -> FreeSet {
        FreeSet(BTreeSet::from([SENTINEL]))
    }

    #[inline]
    pub(super) fn insert(&mut self, key: (u64, u64, u32)) {
        self.0.insert(key);
    }

    #[inline]
    pub(super) fn remove(&mut self, key: &(u64, u64, u32)) {
        self.0.remove(key);
    }

    /// The smallest entry of at least `size` bytes.
    #[inline]
    pub(super) fn first_at_least(&self, size: u64) -> Option<(u64, u64, u32)> {
        self.0
            .range((size, 0, 0)..)
            .next()
            .copied()
            .filter(|k| k.2 != NIL)
    }

    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &(u64, u64, u32)> {
        self.0.iter().filter(|k| k.2 != NIL)
    }

    /// Entries of at least `size` bytes, smallest first.
    pub(super) fn at_least(&self, size: u64) -> impl Iterator<Item = &(u64, u64, u32)> {
        self.0.range((size, 0, 0)..).filter(|k| k.2 != NIL)
    }

    pub(super) fn last(&self) -> Option<&(u64, u64, u32)> {
        self.0.iter().rev().nth(1)
    }

    pub(super) fn contains(&self, key: &(u64, u64, u32)) -> bool {
        self.0.contains(key)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len() - 1
    }
}

impl StreamPools {
    /// Take the block's contribution to `inactive_split` out of the stats (call before a
    /// change), or put it back (after).
    #[inline]
    pub(super) fn inactive_split_account(&mut self, i: u32, add: bool) {
        let b = &self.blocks[i as usize];
        // As in PyTorch, blocks of expandable segments are left out: their free pages can
        // always be given back.
        if b.state == BlockState::Free
            && self.is_split(i)
            && !self.segments[b.seg as usize].expandable
        {
            let size = b.size;
            let pool = self.segments[b.seg as usize].pool;
            if add {
                stats::increase(&mut self.stats.inactive_split, pool, 1);
                stats::increase(&mut self.stats.inactive_split_bytes, pool, size);
            } else {
                stats::decrease(&mut self.stats.inactive_split, pool, 1);
                stats::decrease(&mut self.stats.inactive_split_bytes, pool, size);
            }
        }
    }

    #[inline]
    pub(super) fn free_key(&self, i: u32) -> (u64, u64, u32) {
        let b = &self.blocks[i as usize];
        (b.size, b.addr, i)
    }

    /// Whether free block `i` lies in an expandable segment and starts or ends inside a
    /// page (which it then shares with a live neighbour, so a placement there can cost no
    /// new page).
    #[inline]
    pub(super) fn is_partial(&self, i: u32) -> bool {
        let b = &self.blocks[i as usize];
        let mask = self.granularity.wrapping_sub(1);
        self.segments[b.seg as usize].expandable && (b.addr | (b.addr + b.size)) & mask != 0
    }

    pub(super) fn insert_free(&mut self, i: u32) {
        let pool = self.segments[self.blocks[i as usize].seg as usize].pool;
        if self.is_partial(i) {
            self.partial_free[pool.idx()] += 1;
        }
        self.blocks[i as usize].gc_base = self.lookups[pool.idx()];
        match pool {
            PoolKind::Small => {
                let b = &self.blocks[i as usize];
                self.small.insert(i, b.size, b.addr)
            }
            PoolKind::Large => {
                let key = self.free_key(i);
                self.large.insert(key);
            }
        }
    }

    pub(super) fn remove_free(&mut self, i: u32) {
        let pool = self.segments[self.blocks[i as usize].seg as usize].pool;
        if self.is_partial(i) {
            self.partial_free[pool.idx()] -= 1;
        }
        match pool {
            PoolKind::Small => self.small.remove(i, self.blocks[i as usize].size),
            PoolKind::Large => {
                let key = self.free_key(i);
                self.large.remove(&key);
            }
        }
    }

    /// Free block ids of one pool.
    pub(super) fn free_ids(&self, pool: PoolKind) -> Vec<u32> {
        match pool {
            PoolKind::Small => self.small.iter().collect(),
            PoolKind::Large => self.large.iter().map(|&(_, _, i)| i).collect(),
        }
    }
}
