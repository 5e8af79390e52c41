//! Giving memory back: fully free segments for `empty_cache` and under memory pressure,
//! and the garbage-collection candidates (oldest free blocks first). The front returns what
//! this file lets go of to the driver.

use super::*;

/// A segment the policy has let go of: the front returns it to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasedSegment {
    /// Device address.
    pub addr: u64,
    /// Size.
    pub size: u64,
    /// Pool it belonged to.
    pub pool: PoolKind,
    /// Stream it belonged to.
    pub stream: StreamId,
}

impl StreamPools {
    pub(super) fn release_segment_of(&mut self, i: u32) -> ReleasedSegment {
        let s = self.blocks[i as usize].seg;
        self.remove_free(i);
        self.drop_block(i);
        let seg = &mut self.segments[s as usize];
        seg.live = false;
        self.spare_segments.push(s);
        self.live_segments -= 1;
        ReleasedSegment {
            addr: seg.addr,
            size: seg.size,
            pool: seg.pool,
            stream: self.stream,
        }
    }

    /// Let go of every segment that is entirely free (`empty_cache`), appending them to
    /// `out`.
    pub fn release_free_segments(&mut self, out: &mut Vec<ReleasedSegment>) {
        self.structural_change();
        for pool in [PoolKind::Small, PoolKind::Large] {
            for i in self.free_ids(pool) {
                if !self.is_split(i) && !self.in_expandable(i) {
                    out.push(self.release_segment_of(i));
                }
            }
        }
    }

    /// Garbage-collection candidates of the large pool: whole free segments and their age
    /// (lookups since they became free), for PyTorch's `garbage_collect_cached_blocks`.
    pub fn gc_candidates(&self) -> Vec<(u64, u32)> {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        let now = self.lookups[PoolKind::Large.idx()];
        self.large
            .iter()
            .map(|&(_, _, i)| i)
            .filter(|&i| !self.is_split(i) && !self.in_expandable(i))
            .map(|i| (now - self.blocks[i as usize].gc_base, i))
            .collect()
    }

    /// Release the whole free segment whose block is `block` (from [`Self::gc_candidates`]).
    pub fn release_gc_candidate(&mut self, block: u32) -> Option<ReleasedSegment> {
        self.structural_change();
        let b = self.blocks.get(block as usize)?;
        if !b.live
            || b.state != BlockState::Free
            || self.is_split(block)
            || self.in_expandable(block)
        {
            return None;
        }
        Some(self.release_segment_of(block))
    }
}
