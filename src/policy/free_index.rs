//! The free indexes of one stream: the large pool's free tree ([`FreeSet`]) and, with
//! `bins`, the small pool's size classes; inserting and removing a free block, and the
//! inactive-split accounting that goes with it. It does not choose blocks (see `fixed` and
//! `expandable`).

use super::*;

/// A free block's key in the large pool's index: (size, address, block).
type Key = (u64, u64, u32);

/// Free blocks of the large pool, ordered by (size, address, id): best fit is the first
/// entry at or above the request.
///
/// A sorted vector while the stream holds few free large blocks (one or two in a steady
/// training loop), where a binary search and a short move beat a B-tree's node walk and
/// rebalancing: the `large` mix of `examples/pairs` spent about 15 % of a pair in `BTreeSet`
/// insert and remove, and took 143 → 93 ns a pair with the vector. Above [`TREE_ABOVE`]
/// entries, where moving the tail would cost more than the tree, it becomes a B-tree, and
/// back below [`VEC_BELOW`]. The vector keeps its capacity once grown, so the cached path
/// does not allocate.
#[derive(Debug, Clone)]
pub(super) enum FreeSet {
    Sorted(Vec<Key>),
    Tree(BTreeSet<Key>),
}

/// Entries from which the index is a tree.
const TREE_ABOVE: usize = 512;
/// Entries below which a tree goes back to a vector.
const VEC_BELOW: usize = 256;

/// An iterator over either representation, in key order.
pub(super) enum Iter<V, T> {
    Sorted(V),
    Tree(T),
}

impl<I, V: Iterator<Item = I>, T: Iterator<Item = I>> Iterator for Iter<V, T> {
    type Item = I;
    #[inline]
    fn next(&mut self) -> Option<I> {
        match self {
            Iter::Sorted(v) => v.next(),
            Iter::Tree(t) => t.next(),
        }
    }
}

impl<I, V, T> DoubleEndedIterator for Iter<V, T>
where
    V: DoubleEndedIterator<Item = I>,
    T: DoubleEndedIterator<Item = I>,
{
    #[inline]
    fn next_back(&mut self) -> Option<I> {
        match self {
            Iter::Sorted(v) => v.next_back(),
            Iter::Tree(t) => t.next_back(),
        }
    }
}

impl FreeSet {
    pub(super) fn new() -> FreeSet {
        FreeSet::Sorted(Vec::with_capacity(INITIAL_BLOCKS))
    }

    #[inline]
    pub(super) fn insert(&mut self, key: Key) {
        match self {
            FreeSet::Sorted(v) => {
                let i = v.partition_point(|k| *k < key);
                debug_assert!(v.get(i) != Some(&key), "inserted twice");
                v.insert(i, key);
                if v.len() > TREE_ABOVE {
                    *self = FreeSet::Tree(v.drain(..).collect());
                }
            }
            FreeSet::Tree(t) => {
                t.insert(key);
            }
        }
    }

    #[inline]
    pub(super) fn remove(&mut self, key: &Key) {
        match self {
            FreeSet::Sorted(v) => {
                if let Ok(i) = v.binary_search(key) {
                    v.remove(i);
                }
            }
            FreeSet::Tree(t) => {
                t.remove(key);
                if t.len() < VEC_BELOW {
                    let mut v = Vec::with_capacity(TREE_ABOVE + 1);
                    v.extend(t.iter().copied());
                    *self = FreeSet::Sorted(v);
                }
            }
        }
    }

    /// The smallest entry of at least `size` bytes.
    #[inline]
    pub(super) fn first_at_least(&self, size: u64) -> Option<Key> {
        self.at_least(size).next().copied()
    }

    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &Key> {
        match self {
            FreeSet::Sorted(v) => Iter::Sorted(v.iter()),
            FreeSet::Tree(t) => Iter::Tree(t.iter()),
        }
    }

    /// Entries of at least `size` bytes, smallest first.
    #[inline]
    pub(super) fn at_least(&self, size: u64) -> impl Iterator<Item = &Key> {
        match self {
            FreeSet::Sorted(v) => Iter::Sorted(v[v.partition_point(|k| k.0 < size)..].iter()),
            FreeSet::Tree(t) => Iter::Tree(t.range((size, 0, 0)..)),
        }
    }

    pub(super) fn last(&self) -> Option<&Key> {
        self.iter().next_back()
    }

    pub(super) fn contains(&self, key: &Key) -> bool {
        match self {
            FreeSet::Sorted(v) => v.binary_search(key).is_ok(),
            FreeSet::Tree(t) => t.contains(key),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            FreeSet::Sorted(v) => v.len(),
            FreeSet::Tree(t) => t.len(),
        }
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
        self.forget_take();
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
        self.forget_take();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both representations answer like a plain ordered set, across the switches between
    /// them (up past TREE_ABOVE, down past VEC_BELOW, and up again).
    #[test]
    fn free_set_answers_like_an_ordered_set_in_both_representations() {
        let mut set = FreeSet::new();
        let mut model = BTreeSet::new();
        // A fixed pseudo-random walk of keys (sizes collide, addresses differ).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let check = |set: &FreeSet, model: &BTreeSet<Key>, probe: u64| {
            assert_eq!(set.len(), model.len());
            assert!(set.iter().eq(model.iter()));
            assert_eq!(set.last(), model.iter().next_back());
            assert_eq!(
                set.first_at_least(probe),
                model.range((probe, 0, 0)..).next().copied()
            );
            assert!(set.at_least(probe).eq(model.range((probe, 0, 0)..)));
        };
        let mut keys = Vec::new();
        for round in 0..3 {
            let target = if round == 1 { 100 } else { 700 };
            while model.len() < target {
                let k = (
                    (next() % 64 + 1) << 20,
                    next() >> 16 << 9,
                    keys.len() as u32,
                );
                keys.push(k);
                set.insert(k);
                model.insert(k);
            }
            check(&set, &model, 30 << 20);
            assert!(matches!(set, FreeSet::Tree(_)) == (round != 1 || model.len() >= VEC_BELOW));
            while model.len() > if round == 1 { 0 } else { 100 } {
                let k = *model
                    .iter()
                    .nth((next() % model.len() as u64) as usize)
                    .unwrap();
                assert!(set.contains(&k));
                set.remove(&k);
                model.remove(&k);
                assert!(!set.contains(&k));
                if model.len() % 97 == 0 {
                    check(&set, &model, next() % (70 << 20));
                }
            }
            check(&set, &model, 1);
            assert!(matches!(set, FreeSet::Sorted(_)));
        }
    }
}
