//! The caching policy, pure: size rounding, pools, best fit, splitting, coalescing,
//! stream-ordered reuse bookkeeping, garbage-collection and release choices.
//!
//! It never calls the driver and holds no pointers: segments are described by an address
//! (an opaque number the backend gave), a size and a pool, blocks by an address and size.
//! The front ([`crate::allocator`]) asks it what to do and carries that out against a
//! [`Backend`](crate::backend::Backend).
//!
//! One [`StreamPools`] holds everything that belongs to one stream of one device. A block
//! belongs to the stream it was allocated on for its whole life (as in PyTorch), so
//! different streams never share a free list and can be served under different locks.
//!
//! Where things live: `sizes` (rounding and segment sizes), `arena` (blocks and segments by
//! index), `free_index` and `bins` (the free tree and the small pool's size classes),
//! `fixed` (best fit in fixed segments), `expandable` (page-aware placement, map/unmap
//! plans), `stream_order` (the free protocol: cached, pending on events, quarantined),
//! `release` (empty_cache and garbage collection), `report` (segments and free figures for
//! snapshots and summaries), `retake` (a freed block parked and taken straight back by the
//! same request), `recut` (the parked block's free space cut again for another size where
//! the placement is forced), `invariants` (the checker the tests call). This module holds
//! [`StreamPools`] itself; it must not call the driver or hold a pointer.

#![forbid(unsafe_code)]

mod arena;
mod bins;
mod expandable;
mod fixed;
mod free_index;
mod invariants;
mod recut;
mod release;
mod report;
mod retake;
mod sizes;
mod stream_order;

pub use crate::ids::PoolKind;
pub use arena::{BlockId, BlockState};
pub use expandable::{MapPlan, PLACEMENT_CANDIDATES, UnmapPlan};
pub use release::ReleasedSegment;
pub use report::{BlockInfo, SegmentInfo};
pub use sizes::{
    LARGE_BUFFER, MIN_BLOCK_SIZE, MIN_LARGE_ALLOC, ROUND_LARGE, Request, SMALL_BUFFER, SMALL_SIZE,
    pool_for, round_size, segment_size_for,
};
pub use stream_order::{Completed, FreeOutcome, Freed, Tracking};

use arena::{Block, Segment};
use free_index::FreeSet;
use retake::LastTake;

use std::collections::{BTreeSet, VecDeque};

use crate::ids::{EventId, StreamId};

use crate::config::Config;

use crate::stats::{self, BlockStats};

const NIL: u32 = u32::MAX;

/// Blocks a stream's vectors have room for from the start.
const INITIAL_BLOCKS: usize = 64;

/// Everything one stream of one device holds.
#[derive(Debug, Clone)]
pub struct StreamPools {
    stream: StreamId,
    blocks: Vec<Block>,
    spare_blocks: Vec<u32>,
    segments: Vec<Segment>,
    spare_segments: Vec<u32>,
    /// Other streams that used allocated blocks (`record_stream`), by the blocks' `uses`
    /// index; emptied lists are kept for reuse.
    uses: Vec<Vec<StreamId>>,
    spare_uses: Vec<u32>,
    /// Free blocks per pool, ordered by (size, address): best fit is the first at or above
    /// the request.
    /// Free blocks of the small pool.
    small: bins::SmallBins,
    /// Free blocks of the large pool.
    large: FreeSet,
    /// The expandable segment of each pool (small, large), if any.
    expandable: [Option<u32>; 2],
    /// Free blocks of expandable segments, per pool (by the pool of their segment), that
    /// start or end inside a page ([`StreamPools::is_partial`]): with none, every free
    /// block is whole pages and placement needs no scan.
    partial_free: [u32; 2],
    /// Unmapped blocks of the expandable segments, per pool, by address.
    unmapped: [BTreeSet<(u64, u32)>; 2],
    /// Bytes mapped in expandable segments.
    mapped_bytes: u64,
    /// Page size of the expandable segments (0 until one is added); a power of two, so
    /// page arithmetic on the placement path is shifts and masks, not divisions.
    granularity: u64,
    /// `granularity.trailing_zeros()`.
    page_shift: u32,
    /// Events recorded on other streams for freed blocks, oldest first.
    pending: VecDeque<(EventId, u32)>,
    /// Per pool, how many lookups have been made (GC age clock).
    lookups: [u64; 2],
    live_segments: usize,
    stats: BlockStats,
    /// The last block taken from the cache, and whether it is parked (see `retake`).
    last_take: LastTake,
}

impl StreamPools {
    /// Empty pools for `stream`.
    pub fn new(stream: StreamId) -> StreamPools {
        StreamPools {
            stream,
            // Room for the first blocks up front, so the vectors every malloc and free
            // writes start in allocations of their own rather than in small ones that may
            // share a cache line with another stream's (threads on different streams must
            // not contend).
            blocks: Vec::with_capacity(INITIAL_BLOCKS),
            spare_blocks: Vec::with_capacity(INITIAL_BLOCKS),
            segments: Vec::new(),
            spare_segments: Vec::new(),
            uses: Vec::new(),
            spare_uses: Vec::new(),
            small: bins::SmallBins::new(),
            large: FreeSet::new(),
            expandable: [None, None],
            partial_free: [0; 2],
            unmapped: [BTreeSet::new(), BTreeSet::new()],
            mapped_bytes: 0,
            granularity: 0,
            page_shift: 0,
            pending: VecDeque::new(),
            lookups: [0; 2],
            live_segments: 0,
            stats: BlockStats::default(),
            last_take: LastTake::NONE,
        }
    }

    /// [`StreamPools::new`] with [`StreamPools::allow_parking`].
    pub fn parking(stream: StreamId) -> StreamPools {
        let mut p = StreamPools::new(stream);
        p.allow_parking();
        p
    }

    /// The stream these pools belong to.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// Block-side statistics of this stream.
    pub fn stats(&self) -> &BlockStats {
        &self.stats
    }

    /// Mutable statistics (for resets).
    pub fn stats_mut(&mut self) -> &mut BlockStats {
        &mut self.stats
    }

    /// Number of segments held.
    pub fn segment_count(&self) -> usize {
        self.live_segments
    }

    /// Whether any freed block waits on events.
    #[inline]
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests;
