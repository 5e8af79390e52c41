//! Free lists of the small pool: one list per exact block size (512 B steps up to the 2 MiB
//! segment), found through a two-level bitmap. Remove and best-fit lookup are O(1); insert
//! walks the free blocks of its exact size (to keep address order, below). None allocates
//! once the link table has grown to the block count.
//!
//! Among blocks of the same size the one at the lowest address is taken first, as in
//! PyTorch's (size, address)-ordered pool: a LIFO order was measured to reserve 2 MiB more
//! than PyTorch on the BERT trace. Each list is kept in address order (an insert walks the
//! blocks of its exact size); across sizes the fit is exact best fit. Blocks
//! larger than a small segment (merged pages of an expandable segment) share the last list,
//! which fits every small request.

use super::{MIN_BLOCK_SIZE, NIL, SMALL_BUFFER};

/// Classes 512 B, 1024 B, ... up to a small segment's 2 MiB (and everything above it):
/// 4096 of them, so 64 words of bits and one 64-bit summary word over them (a `u128`
/// summary cost about 13 instructions on each list that emptied or filled).
const CLASSES: usize = (SMALL_BUFFER / MIN_BLOCK_SIZE) as usize;
const WORDS: usize = CLASSES.div_ceil(64);
const _: () = assert!(WORDS <= 64, "the summary is one u64");

#[derive(Debug, Clone)]
pub(super) struct SmallBins {
    heads: Box<[u32; CLASSES]>,
    words: [u64; WORDS],
    summary: u64,
    /// (prev, next, size, address) in its size list, per block id.
    links: Vec<(u32, u32, u64, u64)>,
    len: usize,
}

#[inline]
fn class(size: u64) -> usize {
    debug_assert!(size.is_multiple_of(MIN_BLOCK_SIZE));
    ((size / MIN_BLOCK_SIZE) as usize)
        .saturating_sub(1)
        .min(CLASSES - 1)
}

impl SmallBins {
    pub(super) fn new() -> SmallBins {
        SmallBins {
            heads: Box::new([NIL; CLASSES]),
            words: [0; WORDS],
            summary: 0,
            links: Vec::with_capacity(super::INITIAL_BLOCKS),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(super) fn insert(&mut self, id: u32, size: u64, addr: u64) {
        let c = class(size);
        if self.links.len() <= id as usize {
            self.links.resize(id as usize + 1, (NIL, NIL, 0, 0));
        }
        let head = self.heads[c];
        if head == NIL {
            self.words[c / 64] |= 1 << (c % 64);
            self.summary |= 1 << (c / 64);
        }
        // Keep each list in address order: the lowest address is taken first.
        let mut prev = NIL;
        let mut next = head;
        while next != NIL && self.links[next as usize].3 < addr {
            prev = next;
            next = self.links[next as usize].1;
        }
        self.links[id as usize] = (prev, next, size, addr);
        if prev == NIL {
            self.heads[c] = id;
        } else {
            self.links[prev as usize].1 = id;
        }
        if next != NIL {
            self.links[next as usize].0 = id;
        }
        self.len += 1;
    }

    #[inline]
    pub(super) fn remove(&mut self, id: u32, size: u64) {
        let c = class(size);
        let (prev, next, _, _) = self.links[id as usize];
        if prev != NIL {
            self.links[prev as usize].1 = next;
        } else {
            self.heads[c] = next;
            if next == NIL {
                self.words[c / 64] &= !(1 << (c % 64));
                if self.words[c / 64] == 0 {
                    self.summary &= !(1 << (c / 64));
                }
            }
        }
        if next != NIL {
            self.links[next as usize].0 = prev;
        }
        self.links[id as usize] = (NIL, NIL, 0, 0);
        self.len -= 1;
    }

    /// A block of the smallest size ≥ `size`, if any.
    #[inline]
    pub(super) fn first_at_least(&self, size: u64) -> Option<u32> {
        self.next_class(class(size)).map(|c| self.heads[c])
    }

    /// [`Self::first_at_least`] when that block is also the smallest fitting block at the
    /// lowest address: not when it heads the last list with others behind it (that list's
    /// sizes are in address order only).
    #[inline]
    pub(super) fn first_fit_sorted(&self, size: u64) -> Option<u32> {
        let c = self.next_class(class(size))?;
        let head = self.heads[c];
        (c < CLASSES - 1 || self.links[head as usize].1 == NIL).then_some(head)
    }

    /// Size of the largest free block.
    pub(super) fn largest(&self) -> Option<u64> {
        if self.summary == 0 {
            return None;
        }
        let w = 63 - self.summary.leading_zeros() as usize;
        let c = w * 64 + 63 - self.words[w].leading_zeros() as usize;
        if c == CLASSES - 1 {
            // The last list holds every size from a segment's up: look at them.
            let mut i = self.heads[c];
            let mut max = 0;
            while i != NIL {
                let (_, next, size, _) = self.links[i as usize];
                max = max.max(size);
                i = next;
            }
            return Some(max);
        }
        Some((c as u64 + 1) * MIN_BLOCK_SIZE)
    }

    /// Free block ids of at least `size` bytes, smallest size first (the most recently
    /// freed first within a size).
    pub(super) fn at_least(&self, size: u64) -> impl Iterator<Item = u32> + '_ {
        let mut c = class(size);
        let mut i = NIL;
        std::iter::from_fn(move || {
            while i == NIL {
                c = self.next_class(c)?;
                i = self.heads[c];
                c += 1;
            }
            let cur = i;
            i = self.links[i as usize].1;
            Some(cur)
        })
    }

    /// The first non-empty class at or above `c`.
    #[inline]
    fn next_class(&self, c: usize) -> Option<usize> {
        if c >= CLASSES {
            return None;
        }
        let w = c / 64;
        let bits = self.words[w] & (!0u64 << (c % 64));
        if bits != 0 {
            return Some(w * 64 + bits.trailing_zeros() as usize);
        }
        let higher = if w + 1 >= 64 {
            0
        } else {
            self.summary & (!0u64 << (w + 1))
        };
        if higher == 0 {
            return None;
        }
        let w = higher.trailing_zeros() as usize;
        Some(w * 64 + self.words[w].trailing_zeros() as usize)
    }

    /// Every free block id, smallest size first.
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.at_least(MIN_BLOCK_SIZE)
    }

    /// Whether `id` is linked in the list of `size`.
    pub(super) fn contains(&self, id: u32, size: u64) -> bool {
        let mut i = self.heads[class(size)];
        while i != NIL {
            if i == id {
                return true;
            }
            i = self.links[i as usize].1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_beyond_a_small_segment_share_the_last_list() {
        let mut b = SmallBins::new();
        b.insert(1, 6 << 20, 8 << 20);
        b.insert(2, 4 << 20, 0);
        assert_eq!(b.first_at_least(1 << 20), Some(2));
        assert_eq!(b.largest(), Some(6 << 20));
        assert!(b.contains(1, 6 << 20));
        b.remove(2, 4 << 20);
        assert_eq!(b.first_at_least(512), Some(1));
    }

    #[test]
    fn best_fit_across_words_and_address_order_within_size() {
        let mut b = SmallBins::new();
        assert_eq!(b.first_at_least(512), None);
        b.insert(1, 1024, 0);
        b.insert(3, 1 << 20, 3 << 20);
        b.insert(2, 1 << 20, 2 << 20);
        b.insert(4, 2 << 20, 8 << 20);
        assert_eq!(b.first_at_least(512), Some(1));
        assert_eq!(
            b.first_at_least(1536),
            Some(2),
            "lowest address among equal sizes"
        );
        b.remove(2, 1 << 20);
        assert_eq!(b.first_at_least(1536), Some(3));
        b.insert(2, 1 << 20, 2 << 20);
        assert_eq!(b.largest(), Some(2 << 20));
        b.remove(3, 1 << 20);
        assert_eq!(b.first_at_least(1536), Some(2));
        b.remove(2, 1 << 20);
        assert_eq!(b.first_at_least(1536), Some(4));
        b.remove(4, 2 << 20);
        assert_eq!(b.first_at_least(1536), None);
        assert_eq!(b.largest(), Some(1024));
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![1]);
        assert!(b.contains(1, 1024));
        b.remove(1, 1024);
        assert_eq!(b.len(), 0);
        assert_eq!(b.largest(), None);
    }

    #[test]
    fn at_least_walks_sizes_upward_skipping_empty_lists() {
        let mut b = SmallBins::new();
        assert_eq!(b.at_least(512).next(), None);
        b.insert(1, 1024, 0);
        b.insert(2, 300 * 512, 2 << 20);
        b.insert(3, 300 * 512, 1 << 20);
        b.insert(4, 8 << 20, 4 << 20);
        assert_eq!(b.at_least(512).collect::<Vec<_>>(), vec![1, 3, 2, 4]);
        assert_eq!(b.at_least(1536).collect::<Vec<_>>(), vec![3, 2, 4]);
        assert_eq!(b.at_least(4 << 20).collect::<Vec<_>>(), vec![4]);
        b.remove(4, 8 << 20);
        assert_eq!(b.at_least(301 * 512).next(), None);
    }
}
