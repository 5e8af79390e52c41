//! One stream's pointer map: the addresses of its live raw (C-layer) allocations, each
//! with its block. The most recent insertion is kept beside the hash map rather than in it,
//! so the commonest raw pattern — a pointer freed before the next malloc on its stream —
//! costs no hashing at all (`vs_pytorch`'s C ABI spent about a tenth of a pair in the
//! table's insert and remove). It holds addresses only: it must not decide anything about
//! the blocks, which stay the policy's.

use rustc_hash::FxHashMap;

use crate::policy::BlockId;

/// Address → block of a stream's live raw allocations (the caller's lock guards it).
pub(super) struct RawMap {
    /// Every entry but `recent`.
    older: FxHashMap<u64, BlockId>,
    /// The last entry inserted, while it is live; never also in `older`.
    recent: Option<(u64, BlockId)>,
}

impl RawMap {
    /// An empty map with room for `capacity` entries before its table grows.
    pub(super) fn with_capacity(capacity: usize) -> RawMap {
        RawMap {
            older: FxHashMap::with_capacity_and_hasher(capacity, Default::default()),
            recent: None,
        }
    }

    /// Book `ptr`, just handed out as `block` (a live address is never booked twice).
    #[inline]
    pub(super) fn insert(&mut self, ptr: u64, block: BlockId) {
        debug_assert!(self.get(ptr).is_none(), "raw pointer {ptr:#x} booked twice");
        if let Some((p, b)) = self.recent.replace((ptr, block)) {
            self.older.insert(p, b);
        }
    }

    /// Take `ptr` out, with its block; `None` if it is not booked here.
    #[inline]
    pub(super) fn remove(&mut self, ptr: u64) -> Option<BlockId> {
        match self.recent {
            Some((p, b)) if p == ptr => {
                self.recent = None;
                Some(b)
            }
            _ => self.older.remove(&ptr),
        }
    }

    /// The block of `ptr`, if it is booked here.
    pub(super) fn get(&self, ptr: u64) -> Option<BlockId> {
        match self.recent {
            Some((p, b)) if p == ptr => Some(b),
            _ => self.older.get(&ptr).copied(),
        }
    }

    /// Every booked address with its block, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, BlockId)> + '_ {
        self.recent
            .into_iter()
            .chain(self.older.iter().map(|(&p, &b)| (p, b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_wherever_they_are_kept() {
        let mut m = RawMap::with_capacity(4);
        assert_eq!(m.remove(0x1000), None);
        m.insert(0x1000, BlockId(1));
        m.insert(0x2000, BlockId(2));
        m.insert(0x3000, BlockId(3));
        let mut all: Vec<_> = m.iter().collect();
        all.sort_by_key(|e| e.0);
        assert_eq!(
            all,
            [
                (0x1000, BlockId(1)),
                (0x2000, BlockId(2)),
                (0x3000, BlockId(3))
            ]
        );
        // An older entry, then the recent one, then an absent one.
        assert_eq!(m.get(0x2000), Some(BlockId(2)));
        assert_eq!(m.remove(0x2000), Some(BlockId(2)));
        assert_eq!(m.remove(0x2000), None);
        assert_eq!(m.get(0x3000), Some(BlockId(3)));
        assert_eq!(m.remove(0x3000), Some(BlockId(3)));
        assert_eq!(m.get(0x3000), None);
        assert_eq!(m.remove(0x4000), None);
        // The recent slot is free again: the next insertion takes it, the older one stays.
        m.insert(0x5000, BlockId(5));
        assert_eq!(m.remove(0x1000), Some(BlockId(1)));
        assert_eq!(m.iter().collect::<Vec<_>>(), [(0x5000, BlockId(5))]);
        assert_eq!(m.remove(0x5000), Some(BlockId(5)));
        assert_eq!(m.iter().count(), 0);
    }
}
