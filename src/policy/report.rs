//! Reporting: what one stream holds, as [`SegmentInfo`]/[`BlockInfo`] for snapshots and
//! summaries, and the free-byte figures the OOM message and the summary use. Read-only.

use super::*;

/// A block as reported to the outside (snapshots, summaries, invariant checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Device address.
    pub addr: u64,
    /// Block size (rounded).
    pub size: u64,
    /// Bytes requested by the caller (0 when free).
    pub requested: u64,
    /// State.
    pub state: BlockState,
}

/// A segment as reported to the outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Device address.
    pub addr: u64,
    /// Size.
    pub size: u64,
    /// Pool.
    pub pool: PoolKind,
    /// Stream the segment belongs to.
    pub stream: StreamId,
    /// Part of an expandable segment: one contiguous mapped run of it.
    pub expandable: bool,
    /// Its blocks, in address order; they tile the segment.
    pub blocks: Vec<BlockInfo>,
}

impl StreamPools {
    /// The largest free block (any pool).
    pub fn largest_free(&self) -> u64 {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        let large = self.large.last().map_or(0, |&(size, _, _)| size);
        large.max(self.small.largest().unwrap_or(0))
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> u64 {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        let small: u64 = self
            .small
            .iter()
            .map(|i| self.blocks[i as usize].size)
            .sum();
        small + self.large.iter().map(|&(s, _, _)| s).sum::<u64>()
    }

    /// Segments with their blocks, in address order. An expandable segment is reported as
    /// its contiguous mapped runs (each one a segment of its own, as PyTorch's snapshots show
    /// mapped memory); unmapped address space is left out.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        debug_assert!(
            !self.is_parked(),
            "settle a park before looking at the free space"
        );
        let mut v = Vec::new();
        for s in self.segments.iter().filter(|s| s.live) {
            let mut run: Option<SegmentInfo> = None;
            let mut i = s.head;
            while i != NIL {
                let b = &self.blocks[i as usize];
                if b.mapped {
                    let r = run.get_or_insert_with(|| SegmentInfo {
                        addr: b.addr,
                        size: 0,
                        pool: s.pool,
                        stream: self.stream,
                        expandable: s.expandable,
                        blocks: Vec::new(),
                    });
                    r.size += b.size;
                    r.blocks.push(BlockInfo {
                        addr: b.addr,
                        size: b.size,
                        requested: b.requested,
                        state: b.state,
                    });
                } else if let Some(r) = run.take() {
                    v.push(r);
                }
                i = b.next;
            }
            v.extend(run);
        }
        v.sort_by_key(|s| s.addr);
        v
    }
}
