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

#![forbid(unsafe_code)]

mod bins;

use std::collections::{BTreeSet, VecDeque};

use crate::backend::{EventId, StreamId};
use crate::config::Config;
use crate::stats::{self, BlockStats};

/// Every block size is a multiple of this.
pub const MIN_BLOCK_SIZE: u64 = 512;
/// Requests up to this size are served from the small pool.
pub const SMALL_SIZE: u64 = 1 << 20;
/// How many free blocks, smallest first, the page-aware placement of expandable segments
/// looks at before it settles for the best seen.
pub const PLACEMENT_CANDIDATES: usize = 64;
/// Segment size of the small pool.
pub const SMALL_BUFFER: u64 = 2 << 20;
/// Segment size of the large pool for requests below [`MIN_LARGE_ALLOC`].
pub const LARGE_BUFFER: u64 = 20 << 20;
/// Requests at least this large get a segment of their own size (rounded to [`ROUND_LARGE`]).
pub const MIN_LARGE_ALLOC: u64 = 10 << 20;
/// Rounding of large segments.
pub const ROUND_LARGE: u64 = 2 << 20;

const NIL: u32 = u32::MAX;

/// Free blocks of one pool, ordered by (size, address, id): best fit is the first entry at or
/// above the request.
///
/// A sentinel entry that sorts after every real one stays in the tree for its whole life:
/// without it the tree frees its root node whenever it empties and allocates it again on
/// the next insert, a heap allocation per call in the common one-free-block steady state.
#[derive(Debug)]
struct FreeSet(BTreeSet<(u64, u64, u32)>);

const SENTINEL: (u64, u64, u32) = (u64::MAX, u64::MAX, NIL);

impl FreeSet {
    fn new() -> FreeSet {
        FreeSet(BTreeSet::from([SENTINEL]))
    }

    #[inline]
    fn insert(&mut self, key: (u64, u64, u32)) {
        self.0.insert(key);
    }

    #[inline]
    fn remove(&mut self, key: &(u64, u64, u32)) {
        self.0.remove(key);
    }

    /// The smallest entry of at least `size` bytes.
    #[inline]
    fn first_at_least(&self, size: u64) -> Option<(u64, u64, u32)> {
        self.0
            .range((size, 0, 0)..)
            .next()
            .copied()
            .filter(|k| k.2 != NIL)
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &(u64, u64, u32)> {
        self.0.iter().filter(|k| k.2 != NIL)
    }

    /// Entries of at least `size` bytes, smallest first.
    fn at_least(&self, size: u64) -> impl Iterator<Item = &(u64, u64, u32)> {
        self.0.range((size, 0, 0)..).filter(|k| k.2 != NIL)
    }

    fn last(&self) -> Option<&(u64, u64, u32)> {
        self.0.iter().rev().nth(1)
    }

    fn contains(&self, key: &(u64, u64, u32)) -> bool {
        self.0.contains(key)
    }

    fn len(&self) -> usize {
        self.0.len() - 1
    }
}

/// Which pool a block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Requests ≤ 1 MiB, 2 MiB segments.
    Small,
    /// Everything else.
    Large,
}

impl PoolKind {
    /// Index in a [`StatArray`](crate::stats::StatArray): 1 small, 2 large (0 is all).
    #[inline]
    pub fn stat_index(self) -> usize {
        match self {
            PoolKind::Small => 1,
            PoolKind::Large => 2,
        }
    }

    #[inline]
    fn idx(self) -> usize {
        self.stat_index() - 1
    }

    /// The other pool.
    fn other(self) -> PoolKind {
        match self {
            PoolKind::Small => PoolKind::Large,
            PoolKind::Large => PoolKind::Small,
        }
    }

    /// Name as PyTorch's snapshots spell it.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Small => "small",
            PoolKind::Large => "large",
        }
    }
}

/// PyTorch's `roundup_power2_next_division`: round `size` up to the next of `divisions`
/// equal steps between two powers of two.
fn roundup_power2_next_division(size: u64, divisions: u64) -> u64 {
    if size.is_power_of_two() {
        return size;
    }
    let floor = 1u64 << (63 - size.leading_zeros());
    let step = floor >> (63 - divisions.leading_zeros());
    if step == 0 {
        return floor << 1;
    }
    let rounded_floor = size & !(step - 1);
    if rounded_floor == size {
        size
    } else {
        rounded_floor + step
    }
}

/// The block size a request of `size` bytes takes (PyTorch's `round_size`).
pub fn round_size(size: u64, cfg: &Config) -> u64 {
    if size < MIN_BLOCK_SIZE {
        return MIN_BLOCK_SIZE;
    }
    let divisions = cfg.roundup_divisions_for(size);
    if divisions > 1 && size > MIN_BLOCK_SIZE * divisions {
        roundup_power2_next_division(size, divisions)
    } else {
        size.div_ceil(MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE
    }
}

/// The pool a rounded size is served from.
#[inline]
pub fn pool_for(rounded: u64) -> PoolKind {
    if rounded <= SMALL_SIZE {
        PoolKind::Small
    } else {
        PoolKind::Large
    }
}

/// Size of the segment to ask the driver for when no cached block fits.
pub fn segment_size_for(rounded: u64) -> u64 {
    if rounded <= SMALL_SIZE {
        SMALL_BUFFER
    } else if rounded < MIN_LARGE_ALLOC {
        LARGE_BUFFER
    } else {
        rounded.div_ceil(ROUND_LARGE) * ROUND_LARGE
    }
}

/// A request, with everything derived from its size computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes the caller asked for.
    pub requested: u64,
    /// Block size looked for.
    pub rounded: u64,
    /// Pool it is served from.
    pub pool: PoolKind,
    /// Segment size to allocate when nothing cached fits.
    pub segment_size: u64,
}

impl Request {
    /// Derive a request from a caller's size (must be > 0).
    pub fn new(size: u64, cfg: &Config) -> Request {
        let rounded = round_size(size, cfg);
        Request {
            requested: size,
            rounded,
            pool: pool_for(rounded),
            segment_size: segment_size_for(rounded),
        }
    }
}

/// Handle of a block inside one [`StreamPools`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Life state of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// In the free set, available for reuse on this stream.
    Free,
    /// Handed out to a caller.
    Allocated,
    /// Freed by the caller, waiting for events on other streams that used it.
    Pending,
}

#[derive(Debug, Clone)]
struct Block {
    addr: u64,
    size: u64,
    requested: u64,
    seg: u32,
    prev: u32,
    next: u32,
    state: BlockState,
    pending_events: u32,
    /// Value of the pool's lookup counter when the block became free (GC age base).
    gc_base: u64,
    /// Other streams that used this block (`record_stream`); capacity kept across reuse.
    stream_uses: Vec<StreamId>,
    /// Freed while work on another stream might still use it, with no way to know when that
    /// ends (recording and device synchronization both failed): never reused.
    quarantined: bool,
    /// Backed by device memory. Always true in fixed segments; in an expandable segment,
    /// unmapped blocks are free address space with no memory behind it (never handed out,
    /// not in the free sets).
    mapped: bool,
    live: bool,
}

impl Block {
    /// A free block, linked to nothing yet.
    fn fresh(addr: u64, size: u64, seg: u32, mapped: bool) -> Block {
        Block {
            addr,
            size,
            requested: 0,
            seg,
            prev: NIL,
            next: NIL,
            state: BlockState::Free,
            pending_events: 0,
            gc_base: 0,
            stream_uses: Vec::new(),
            quarantined: false,
            mapped,
            live: true,
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    addr: u64,
    size: u64,
    pool: PoolKind,
    head: u32,
    /// An expandable segment: a reserved address range whose pages are mapped as needed.
    expandable: bool,
    live: bool,
}

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

/// A range of an expandable segment to map (from [`StreamPools::plan_map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapPlan {
    /// Start (page-aligned).
    pub addr: u64,
    /// Length (whole pages).
    pub len: u64,
}

/// A range of free pages to unmap (from [`StreamPools::plan_unmap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmapPlan {
    block: u32,
    /// Pool of the segment.
    pub pool: PoolKind,
    /// Start (page-aligned).
    pub addr: u64,
    /// Length (whole pages).
    pub len: u64,
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

/// How the front followed the work that other streams may still do on a block it frees
/// (see [`StreamPools::free`]).
#[derive(Debug, Clone, Copy)]
pub struct Tracking<'a> {
    /// Events recorded on those streams, one per stream whose recording succeeded.
    pub events: &'a [EventId],
    /// Some stream's work cannot be followed: its event could not be recorded and the device
    /// could not be synchronized either. The block is then never reused.
    pub untracked: bool,
}

impl Tracking<'_> {
    /// Nothing to wait for: no other stream used the block (or the device was synchronized).
    pub const NONE: Tracking<'static> = Tracking {
        events: &[],
        untracked: false,
    };
}

/// What became of a freed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeOutcome {
    /// Back in the cache.
    Cached,
    /// Waiting for events on other streams.
    Pending,
    /// Never to be reused (see [`Tracking::untracked`]).
    Quarantined,
}

/// A block that went back to the cache (from [`StreamPools::complete_oldest_pending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    /// Its address.
    pub addr: u64,
    /// The bytes its caller had asked for.
    pub requested: u64,
}

/// An outstanding event that completed (from [`StreamPools::complete_oldest_pending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The event, for the front to release.
    pub event: EventId,
    /// The block that went back to the cache with it, if any.
    pub freed: Option<Freed>,
}

/// Everything one stream of one device holds.
#[derive(Debug)]
pub struct StreamPools {
    stream: StreamId,
    blocks: Vec<Block>,
    spare_blocks: Vec<u32>,
    segments: Vec<Segment>,
    spare_segments: Vec<u32>,
    /// Free blocks per pool, ordered by (size, address): best fit is the first at or above
    /// the request.
    /// Free blocks of the small pool.
    small: bins::SmallBins,
    /// Free blocks of the large pool.
    large: FreeSet,
    /// The expandable segment of each pool (small, large), if any.
    expandable: [Option<u32>; 2],
    /// Unmapped blocks of the expandable segments, per pool, by address.
    unmapped: [BTreeSet<(u64, u32)>; 2],
    /// Bytes mapped in expandable segments.
    mapped_bytes: u64,
    /// Page size of the expandable segments (0 until one is added).
    granularity: u64,
    /// Events recorded on other streams for freed blocks, oldest first.
    pending: VecDeque<(EventId, u32)>,
    /// Per pool, how many lookups have been made (GC age clock).
    lookups: [u64; 2],
    live_segments: usize,
    stats: BlockStats,
}

impl StreamPools {
    /// Empty pools for `stream`.
    pub fn new(stream: StreamId) -> StreamPools {
        StreamPools {
            stream,
            blocks: Vec::new(),
            spare_blocks: Vec::new(),
            segments: Vec::new(),
            spare_segments: Vec::new(),
            small: bins::SmallBins::new(),
            large: FreeSet::new(),
            expandable: [None, None],
            unmapped: [BTreeSet::new(), BTreeSet::new()],
            mapped_bytes: 0,
            granularity: 0,
            pending: VecDeque::new(),
            lookups: [0; 2],
            live_segments: 0,
            stats: BlockStats::default(),
        }
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

    /// Device address of a block.
    #[inline]
    pub fn block_addr(&self, id: BlockId) -> u64 {
        self.blocks[id.0 as usize].addr
    }

    /// Size of a block.
    #[inline]
    pub fn block_size(&self, id: BlockId) -> u64 {
        self.blocks[id.0 as usize].size
    }

    /// Bytes requested for a block.
    #[inline]
    pub fn block_requested(&self, id: BlockId) -> u64 {
        self.blocks[id.0 as usize].requested
    }

    /// State of a block, or `None` if the id is not a live block.
    pub fn block_state(&self, id: BlockId) -> Option<BlockState> {
        self.blocks
            .get(id.0 as usize)
            .filter(|b| b.live)
            .map(|b| b.state)
    }

    /// Pool of a block.
    #[inline]
    pub fn block_pool(&self, id: BlockId) -> PoolKind {
        self.segments[self.blocks[id.0 as usize].seg as usize].pool
    }

    fn new_block(&mut self, b: Block) -> u32 {
        if let Some(i) = self.spare_blocks.pop() {
            let slot = &mut self.blocks[i as usize];
            let uses = std::mem::take(&mut slot.stream_uses);
            *slot = b;
            slot.stream_uses = uses;
            slot.stream_uses.clear();
            i
        } else {
            self.blocks.push(b);
            (self.blocks.len() - 1) as u32
        }
    }

    fn drop_block(&mut self, i: u32) {
        self.blocks[i as usize].live = false;
        self.spare_blocks.push(i);
    }

    #[inline]
    fn is_mapped_free(&self, i: u32) -> bool {
        let b = &self.blocks[i as usize];
        b.state == BlockState::Free && b.mapped
    }

    #[inline]
    fn is_split(&self, i: u32) -> bool {
        let b = &self.blocks[i as usize];
        b.prev != NIL || b.next != NIL
    }

    /// Take the block's contribution to `inactive_split` out of the stats (call before a
    /// change), or put it back (after).
    #[inline]
    fn inactive_split_account(&mut self, i: u32, add: bool) {
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
    fn free_key(&self, i: u32) -> (u64, u64, u32) {
        let b = &self.blocks[i as usize];
        (b.size, b.addr, i)
    }

    fn insert_free(&mut self, i: u32) {
        let pool = self.segments[self.blocks[i as usize].seg as usize].pool;
        self.blocks[i as usize].gc_base = self.lookups[pool.idx()];
        match pool {
            PoolKind::Small => self.small.insert(i, self.blocks[i as usize].size),
            PoolKind::Large => {
                let key = self.free_key(i);
                self.large.insert(key);
            }
        }
    }

    fn remove_free(&mut self, i: u32) {
        let pool = self.segments[self.blocks[i as usize].seg as usize].pool;
        match pool {
            PoolKind::Small => self.small.remove(i, self.blocks[i as usize].size),
            PoolKind::Large => {
                let key = self.free_key(i);
                self.large.remove(&key);
            }
        }
    }

    /// Free block ids of one pool.
    fn free_ids(&self, pool: PoolKind) -> Vec<u32> {
        match pool {
            PoolKind::Small => self.small.iter().collect(),
            PoolKind::Large => self.large.iter().map(|&(_, _, i)| i).collect(),
        }
    }

    /// How many pages of `[a, a + r)` no live block touches, for a placement inside the
    /// free mapped block `[s, e)` of an expandable segment. A free mapped block that starts
    /// or ends inside a page shares that page with the allocated block next to it (unmapped
    /// ranges are whole pages), so a placement reaching into it costs no page.
    fn new_pages(&self, s: u64, e: u64, a: u64, r: u64) -> u64 {
        let g = self.granularity;
        let (first, last) = (a / g, (a + r - 1) / g);
        let shared_first = !s.is_multiple_of(g) && first == s / g;
        let shared_last = !e.is_multiple_of(g) && last == (e - 1) / g;
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
    fn find_free_paged(&self, req: &Request) -> Option<(u32, u64)> {
        let own = self.find_free_paged_in(req, req.pool);
        if own.is_none_or(|(n, _, _)| n > 0)
            && let Some((0, i, at)) = self.find_free_paged_in(req, req.pool.other())
        {
            return Some((i, at));
        }
        own.map(|(_, i, at)| (i, at))
    }

    /// For a request of whole pages, the pages `[a, a + r)` spans (one more than it needs
    /// unless aligned: such a block then keeps a page mapped for its neighbours' sake after
    /// they are freed); 0 for other sizes, whose blocks pack best end to end.
    fn aligned_span(&self, a: u64, r: u64) -> u64 {
        let g = self.granularity;
        if r.is_multiple_of(g) {
            (a + r - 1) / g - a / g + 1
        } else {
            0
        }
    }

    /// Where `r` bytes may go inside the free block `[s, e)`: its start, its end, and its
    /// first and last page boundaries.
    fn placements(&self, s: u64, e: u64, r: u64) -> [Option<u64>; 4] {
        let g = self.granularity;
        let up = s.div_ceil(g) * g;
        let down = e / g * g;
        [
            Some(s),
            Some(e - r),
            (up + r <= e).then_some(up),
            (down >= s + r).then(|| down - r),
        ]
    }

    /// [`Self::find_free_paged`] within the expandable segment of `pool`: (new pages, block,
    /// address).
    fn find_free_paged_in(&self, req: &Request, pool: PoolKind) -> Option<(u64, u32, u64)> {
        let r = req.rounded;
        let seg = self.expandable[pool.idx()]?;
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
            best.is_some_and(|(k, _)| k.0 == 0)
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

    fn find_free_fixed(&self, req: &Request, cfg: &Config) -> Option<u32> {
        let (size, id) = match req.pool {
            // Small blocks are never oversize: max_split_size is above the small pool.
            PoolKind::Small => return self.small.first_at_least(req.rounded),
            PoolKind::Large => {
                let (size, _, id) = self.large.first_at_least(req.rounded)?;
                (size, id)
            }
        };
        if self.segments[self.blocks[id as usize].seg as usize].expandable {
            // max_split_size guards fixed segments; free pages of expandable ones go back.
            return Some(id);
        }
        // A request below max_split_size never takes an oversize block...
        if req.rounded < cfg.max_split_size && size >= cfg.max_split_size {
            return None;
        }
        // ...and an oversize request takes one only if little is wasted.
        if req.rounded >= cfg.max_split_size
            && size >= req.rounded.saturating_add(cfg.max_non_split_rounding)
        {
            return None;
        }
        Some(id)
    }

    fn should_split(&self, i: u32, rounded: u64, cfg: &Config) -> bool {
        let b = &self.blocks[i as usize];
        let remaining = b.size - rounded;
        if self.segments[b.seg as usize].expandable {
            return remaining >= MIN_BLOCK_SIZE;
        }
        match self.segments[b.seg as usize].pool {
            PoolKind::Small => remaining >= MIN_BLOCK_SIZE,
            PoolKind::Large => rounded < cfg.max_split_size && remaining > SMALL_SIZE,
        }
    }

    /// Hand out free block `i` (already out of the free set) for `req` from its start,
    /// splitting off the remainder when worth it.
    fn take_block(&mut self, i: u32, req: &Request, cfg: &Config, pool: PoolKind) -> BlockId {
        self.inactive_split_account(i, false);
        if self.should_split(i, req.rounded, cfg) {
            let (addr, size, seg, next) = {
                let b = &self.blocks[i as usize];
                (b.addr, b.size, b.seg, b.next)
            };
            let rest = self.new_block(Block {
                prev: i,
                next,
                ..Block::fresh(addr + req.rounded, size - req.rounded, seg, true)
            });
            if next != NIL {
                self.blocks[next as usize].prev = rest;
            }
            let b = &mut self.blocks[i as usize];
            b.next = rest;
            b.size = req.rounded;
            self.insert_free(rest);
            self.inactive_split_account(rest, true);
        }
        self.hand_out(i, req, cfg, pool)
    }

    /// [`Self::take_block`] at address `at` inside free block `i` of an expandable segment
    /// (of either pool): what lies before `at` stays free as its own block.
    fn take_block_at(&mut self, i: u32, req: &Request, cfg: &Config, at: u64) -> BlockId {
        let (addr, size, seg, next) = {
            let b = &self.blocks[i as usize];
            (b.addr, b.size, b.seg, b.next)
        };
        debug_assert!(at >= addr && at + req.rounded <= addr + size);
        let pool = self.segments[seg as usize].pool;
        if at == addr {
            return self.take_block(i, req, cfg, pool);
        }
        debug_assert!(self.segments[seg as usize].expandable);
        let t = self.new_block(Block {
            prev: i,
            next,
            ..Block::fresh(at, addr + size - at, seg, true)
        });
        if next != NIL {
            self.blocks[next as usize].prev = t;
        }
        let b = &mut self.blocks[i as usize];
        b.next = t;
        b.size = at - addr;
        self.insert_free(i);
        self.take_block(t, req, cfg, pool)
    }

    /// Mark block `i` (out of the free set, already at its final size, in a segment of
    /// `pool`) allocated for `req`.
    fn hand_out(&mut self, i: u32, req: &Request, cfg: &Config, pool: PoolKind) -> BlockId {
        let b = &mut self.blocks[i as usize];
        b.state = BlockState::Allocated;
        b.requested = req.requested;
        let size = b.size;
        let st = &mut self.stats;
        stats::increase(&mut st.allocation, pool, 1);
        stats::increase(&mut st.allocated_bytes, pool, size);
        stats::increase(&mut st.active, pool, 1);
        stats::increase(&mut st.active_bytes, pool, size);
        stats::increase(&mut st.requested_bytes, pool, req.requested);
        if size >= cfg.max_split_size {
            st.oversize_allocations.increase(1);
        }
        BlockId(i)
    }

    /// Serve `req` from the cache, if a cached block fits: in the expandable segments
    /// where [`Self::find_free_paged`] places it, else by best fit under the
    /// `max_split_size` rules.
    #[inline]
    pub fn try_alloc(&mut self, req: &Request, cfg: &Config) -> Option<BlockId> {
        self.lookups[req.pool.idx()] += 1;
        if (self.expandable[0].is_some() || self.expandable[1].is_some())
            && let Some((i, at)) = self.find_free_paged(req)
        {
            self.remove_free(i);
            return Some(self.take_block_at(i, req, cfg, at));
        }
        let i = self.find_free_fixed(req, cfg)?;
        self.remove_free(i);
        Some(self.take_block(i, req, cfg, req.pool))
    }

    /// A new segment covered by one free block (mapped or not); returns the block.
    fn new_segment(&mut self, addr: u64, size: u64, pool: PoolKind, expandable: bool) -> u32 {
        let seg = Segment {
            addr,
            size,
            pool,
            head: NIL,
            expandable,
            live: true,
        };
        let s = if let Some(s) = self.spare_segments.pop() {
            self.segments[s as usize] = seg;
            s
        } else {
            self.segments.push(seg);
            (self.segments.len() - 1) as u32
        };
        self.live_segments += 1;
        let i = self.new_block(Block::fresh(addr, size, s, !expandable));
        self.segments[s as usize].head = i;
        i
    }

    /// Adopt a new segment from the driver and serve `req` from it.
    pub fn add_segment_and_alloc(
        &mut self,
        addr: u64,
        size: u64,
        req: &Request,
        cfg: &Config,
    ) -> BlockId {
        let i = self.new_segment(addr, size, req.pool, false);
        self.take_block(i, req, cfg, req.pool)
    }

    /// Note that allocated block `id` is used by `stream` too: on free it will wait for
    /// the work queued on that stream.
    pub fn record_stream(&mut self, id: BlockId, stream: StreamId) {
        if stream == self.stream {
            return;
        }
        let b = &mut self.blocks[id.0 as usize];
        if !b.stream_uses.contains(&stream) {
            b.stream_uses.push(stream);
        }
    }

    /// The other streams that used allocated block `id` (`record_stream`): before freeing
    /// it, the front records an event on each and passes them to [`StreamPools::free`].
    #[inline]
    pub fn stream_uses(&self, id: BlockId) -> &[StreamId] {
        &self.blocks[id.0 as usize].stream_uses
    }

    /// The caller frees allocated block `id`, with `tracking` saying how the work of the
    /// other streams that used it ([`StreamPools::stream_uses`]) is followed. The block is
    /// back in the cache at once when nothing is to be waited for, waits for the events
    /// otherwise, and is never reused when some stream's work could not be tracked at all.
    pub fn free(&mut self, id: BlockId, cfg: &Config, tracking: Tracking<'_>) -> FreeOutcome {
        let i = id.0;
        let pool = self.block_pool(id);
        let b = &mut self.blocks[i as usize];
        debug_assert_eq!(b.state, BlockState::Allocated);
        let size = b.size;
        b.stream_uses.clear();
        let st = &mut self.stats;
        stats::decrease(&mut st.allocation, pool, 1);
        stats::decrease(&mut st.allocated_bytes, pool, size);
        if size >= cfg.max_split_size {
            st.oversize_allocations.decrease(1);
        }
        if tracking.events.is_empty() && !tracking.untracked {
            self.return_block(i);
            return FreeOutcome::Cached;
        }
        let b = &mut self.blocks[i as usize];
        b.state = BlockState::Pending;
        b.quarantined = tracking.untracked;
        b.pending_events = tracking.events.len() as u32;
        self.pending.extend(tracking.events.iter().map(|&e| (e, i)));
        if tracking.untracked {
            FreeOutcome::Quarantined
        } else {
            FreeOutcome::Pending
        }
    }

    /// The oldest outstanding event, if any.
    #[inline]
    pub fn oldest_pending(&self) -> Option<EventId> {
        self.pending.front().map(|&(e, _)| e)
    }

    /// The oldest outstanding event completed: drop it; its block returns to the cache if it
    /// was the block's last and the block is not quarantined.
    pub fn complete_oldest_pending(&mut self) -> Option<Completed> {
        let (event, i) = self.pending.pop_front()?;
        let b = &mut self.blocks[i as usize];
        b.pending_events -= 1;
        if b.pending_events == 0 && !b.quarantined {
            let freed = Freed {
                addr: b.addr,
                requested: b.requested,
            };
            self.return_block(i);
            return Some(Completed {
                event,
                freed: Some(freed),
            });
        }
        Some(Completed { event, freed: None })
    }

    /// Every outstanding event, oldest first (for synchronizing them all).
    pub fn pending_events(&self) -> impl Iterator<Item = EventId> + '_ {
        self.pending.iter().map(|&(e, _)| e)
    }

    /// Bytes of blocks waiting on events.
    pub fn pending_bytes(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| b.live && b.state == BlockState::Pending)
            .map(|b| b.size)
            .sum()
    }

    /// Block `i` is no longer used by anyone: mark it free, coalesce with free neighbours,
    /// put it in the free set.
    fn return_block(&mut self, i: u32) {
        let pool = self.segments[self.blocks[i as usize].seg as usize].pool;
        {
            let b = &mut self.blocks[i as usize];
            let (size, req) = (b.size, b.requested);
            b.requested = 0;
            let st = &mut self.stats;
            stats::decrease(&mut st.active, pool, 1);
            stats::decrease(&mut st.active_bytes, pool, size);
            stats::decrease(&mut st.requested_bytes, pool, req);
        }
        let cur = self.merge_mapped_free(i);
        self.blocks[cur as usize].state = BlockState::Free;
        self.insert_free(cur);
        self.inactive_split_account(cur, true);
    }

    fn release_segment_of(&mut self, i: u32) -> ReleasedSegment {
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

    /// The largest free block (any pool).
    pub fn largest_free(&self) -> u64 {
        let large = self.large.last().map_or(0, |&(size, _, _)| size);
        large.max(self.small.largest().unwrap_or(0))
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> u64 {
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

    #[inline]
    fn in_expandable(&self, i: u32) -> bool {
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
        self.granularity = granularity;
        let i = self.new_segment(addr, size, pool, true);
        self.unmapped[pool.idx()].insert((addr, i));
        self.expandable[pool.idx()] = Some(self.blocks[i as usize].seg);
    }

    /// Where to map pages so that `req` fits in the expandable segment of its pool: the
    /// lowest unmapped range that, with the free mapped block just before it, covers the
    /// request. `None` when the segment is missing or has no such room.
    pub fn plan_map(&self, req: &Request, granularity: u64) -> Option<MapPlan> {
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
            let r = req.rounded;
            let mut options = Vec::with_capacity(3);
            let front = pages(r.saturating_sub(before));
            if front <= b.size {
                options.push(MapPlan { addr, len: front });
            }
            let back = pages(r.saturating_sub(after));
            if back <= b.size {
                options.push(MapPlan {
                    addr: addr + b.size - back,
                    len: back,
                });
            }
            if before + b.size + after >= r {
                options.push(MapPlan { addr, len: b.size });
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
    fn merge_mapped_free(&mut self, mut i: u32) -> u32 {
        let prev = self.blocks[i as usize].prev;
        if prev != NIL && self.is_mapped_free(prev) {
            self.inactive_split_account(prev, false);
            self.remove_free(prev);
            self.absorb_next(prev);
            i = prev;
        }
        let next = self.blocks[i as usize].next;
        if next != NIL && self.is_mapped_free(next) {
            self.inactive_split_account(next, false);
            self.remove_free(next);
            self.absorb_next(i);
        }
        i
    }

    /// Block `a` takes over the block after it (which must exist): sizes add up, the links
    /// skip it, and it is dropped. Free-set and stats bookkeeping are the caller's.
    fn absorb_next(&mut self, a: u32) {
        let b = self.blocks[a as usize].next;
        let (size, after) = (self.blocks[b as usize].size, self.blocks[b as usize].next);
        self.blocks[a as usize].size += size;
        self.blocks[a as usize].next = after;
        if after != NIL {
            self.blocks[after as usize].prev = a;
        }
        self.drop_block(b);
    }

    /// The pages of `plan` were mapped: they join the free space before them, and `req` is
    /// served from it.
    pub fn commit_map(&mut self, plan: MapPlan, req: &Request, cfg: &Config) -> BlockId {
        let p = req.pool.idx();
        let &(start, u) = self.unmapped[p]
            .range(..=(plan.addr, u32::MAX))
            .next_back()
            .expect("plan_map names an unmapped range");
        self.unmapped[p].remove(&(start, u));
        let (size, seg) = (self.blocks[u as usize].size, self.blocks[u as usize].seg);
        debug_assert!(plan.addr >= start && plan.addr + plan.len <= start + size);
        // Carve [plan.addr, plan.addr + len) out of `u`; what is left on either side stays
        // unmapped.
        let mut m = u;
        if plan.addr > start {
            let next = self.blocks[u as usize].next;
            m = self.new_block(Block {
                prev: u,
                next,
                ..Block::fresh(plan.addr, start + size - plan.addr, seg, false)
            });
            if next != NIL {
                self.blocks[next as usize].prev = m;
            }
            self.blocks[u as usize].next = m;
            self.blocks[u as usize].size = plan.addr - start;
            self.unmapped[p].insert((start, u));
        }
        let msize = self.blocks[m as usize].size;
        if plan.len < msize {
            let next = self.blocks[m as usize].next;
            let rest = self.new_block(Block {
                prev: m,
                next,
                ..Block::fresh(plan.addr + plan.len, msize - plan.len, seg, false)
            });
            if next != NIL {
                self.blocks[next as usize].prev = rest;
            }
            self.blocks[m as usize].next = rest;
            self.blocks[m as usize].size = plan.len;
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

    /// The pages of `plan` were unmapped: they become unmapped address space.
    pub fn commit_unmap(&mut self, plan: UnmapPlan) {
        let b = plan.block;
        let (addr, size, seg, next) = {
            let x = &self.blocks[b as usize];
            (x.addr, x.size, x.seg, x.next)
        };
        debug_assert!(self.is_mapped_free(b) && addr <= plan.addr);
        let pool = self.segments[seg as usize].pool;
        self.remove_free(b);
        let pre = plan.addr - addr;
        let post = addr + size - (plan.addr + plan.len);
        let blank = |a: u64, sz: u64, mapped: bool| Block::fresh(a, sz, seg, mapped);
        // [addr, plan.addr) stays mapped free (in `b`), the pages become `u`, the tail `q`.
        let u = if pre > 0 {
            self.blocks[b as usize].size = pre;
            let u = self.new_block(blank(plan.addr, plan.len, false));
            self.blocks[b as usize].next = u;
            self.blocks[u as usize].prev = b;
            self.blocks[u as usize].next = next;
            if next != NIL {
                self.blocks[next as usize].prev = u;
            }
            self.insert_free(b);
            u
        } else {
            let x = &mut self.blocks[b as usize];
            x.size = plan.len;
            x.mapped = false;
            b
        };
        if post > 0 {
            let q = self.new_block(blank(plan.addr + plan.len, post, true));
            let after = self.blocks[u as usize].next;
            self.blocks[u as usize].next = q;
            self.blocks[q as usize].prev = u;
            self.blocks[q as usize].next = after;
            if after != NIL {
                self.blocks[after as usize].prev = q;
            }
            self.insert_free(q);
        }
        self.mapped_bytes -= plan.len;
        // Coalesce with unmapped neighbours.
        let p = pool.idx();
        let mut u = u;
        let prev = self.blocks[u as usize].prev;
        if prev != NIL && !self.blocks[prev as usize].mapped {
            let (size, after) = (self.blocks[u as usize].size, self.blocks[u as usize].next);
            self.blocks[prev as usize].size += size;
            self.blocks[prev as usize].next = after;
            if after != NIL {
                self.blocks[after as usize].prev = prev;
            }
            self.drop_block(u);
            u = prev;
        } else {
            self.unmapped[p].insert((self.blocks[u as usize].addr, u));
        }
        let next = self.blocks[u as usize].next;
        if next != NIL && !self.blocks[next as usize].mapped {
            let naddr = self.blocks[next as usize].addr;
            self.unmapped[p].remove(&(naddr, next));
            let (size, after) = (
                self.blocks[next as usize].size,
                self.blocks[next as usize].next,
            );
            self.blocks[u as usize].size += size;
            self.blocks[u as usize].next = after;
            if after != NIL {
                self.blocks[after as usize].prev = u;
            }
            self.drop_block(next);
        }
    }

    /// Expandable segments with nothing mapped any more: forgotten here, returned for the
    /// front to give their address range back.
    pub fn release_empty_expandable(&mut self, out: &mut Vec<ReleasedSegment>) {
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
        self.segments()
            .into_iter()
            .filter(|s| s.expandable)
            .map(|s| (s.addr, s.size))
            .collect()
    }

    /// Check every invariant of the pools; `Err` says which one broke. Costs a full scan:
    /// for tests and debugging.
    pub fn check_invariants(&self, cfg: &Config) -> Result<(), String> {
        let mut recount = BlockStats::default();
        let mut free_seen = 0usize;
        let mut unmapped_seen = 0usize;
        let mut mapped_recount = 0u64;
        let mut pending_seen = 0u64;
        for (si, s) in self.segments.iter().enumerate() {
            if !s.live {
                continue;
            }
            if s.expandable && self.expandable[s.pool.idx()] != Some(si as u32) {
                return Err(format!("expandable segment {si} is not its pool's"));
            }
            let mut i = s.head;
            let mut expect_addr = s.addr;
            let mut prev = NIL;
            let mut prev_free = false;
            let mut prev_unmapped = false;
            while i != NIL {
                let b = self
                    .blocks
                    .get(i as usize)
                    .ok_or_else(|| format!("segment {si}: dangling block index {i}"))?;
                if !b.live {
                    return Err(format!("segment {si}: dead block {i} linked"));
                }
                if b.seg as usize != si {
                    return Err(format!(
                        "block {i} in segment {si} claims segment {}",
                        b.seg
                    ));
                }
                if b.prev != prev {
                    return Err(format!("block {i}: prev link {} != {}", b.prev, prev));
                }
                if b.addr != expect_addr {
                    return Err(format!(
                        "segment {si}: block {i} at {:#x}, expected {:#x} (gap or overlap)",
                        b.addr, expect_addr
                    ));
                }
                if b.size == 0 || b.size % MIN_BLOCK_SIZE != 0 {
                    return Err(format!("block {i}: bad size {}", b.size));
                }
                if !b.mapped {
                    if !s.expandable {
                        return Err(format!("block {i} of fixed segment {si} is unmapped"));
                    }
                    if b.state != BlockState::Free {
                        return Err(format!("block {i} in unmapped pages is {:?}", b.state));
                    }
                    if prev_unmapped {
                        return Err(format!(
                            "segment {si}: adjacent unmapped blocks at {:#x}",
                            b.addr
                        ));
                    }
                    if !self.unmapped[s.pool.idx()].contains(&(b.addr, i)) {
                        return Err(format!("unmapped block {i} missing from the unmapped set"));
                    }
                    unmapped_seen += 1;
                    expect_addr = b.addr + b.size;
                    prev_free = false;
                    prev_unmapped = true;
                    prev = i;
                    i = b.next;
                    continue;
                }
                prev_unmapped = false;
                if s.expandable {
                    mapped_recount += b.size;
                }
                let free = b.state == BlockState::Free;
                if free && prev_free {
                    return Err(format!(
                        "segment {si}: adjacent free blocks at {:#x}",
                        b.addr
                    ));
                }
                let in_set = match s.pool {
                    PoolKind::Small => self.small.contains(i, b.size),
                    PoolKind::Large => self.large.contains(&(b.size, b.addr, i)),
                };
                if free != in_set {
                    return Err(format!("block {i}: free={free} but in free set={in_set}"));
                }
                let split = (b.prev != NIL || b.next != NIL) && !s.expandable;
                match b.state {
                    BlockState::Free => {
                        free_seen += 1;
                        if split {
                            stats::increase(&mut recount.inactive_split, s.pool, 1);
                            stats::increase(&mut recount.inactive_split_bytes, s.pool, b.size);
                        }
                        if b.pending_events != 0 {
                            return Err(format!("free block {i} has pending events"));
                        }
                    }
                    BlockState::Allocated | BlockState::Pending => {
                        if b.state == BlockState::Allocated {
                            stats::increase(&mut recount.allocation, s.pool, 1);
                            stats::increase(&mut recount.allocated_bytes, s.pool, b.size);
                            if b.size >= cfg.max_split_size {
                                recount.oversize_allocations.increase(1);
                            }
                        } else {
                            pending_seen += u64::from(b.pending_events);
                            if b.pending_events == 0 && !b.quarantined {
                                return Err(format!("pending block {i} has no event"));
                            }
                        }
                        stats::increase(&mut recount.active, s.pool, 1);
                        stats::increase(&mut recount.active_bytes, s.pool, b.size);
                        stats::increase(&mut recount.requested_bytes, s.pool, b.requested);
                    }
                }
                expect_addr = b.addr + b.size;
                prev_free = free;
                prev = i;
                i = b.next;
            }
            if expect_addr != s.addr + s.size {
                return Err(format!(
                    "segment {si}: blocks end at {:#x}, segment at {:#x}",
                    expect_addr,
                    s.addr + s.size
                ));
            }
        }
        let unmapped_len: usize = self.unmapped.iter().map(BTreeSet::len).sum();
        if unmapped_len != unmapped_seen {
            return Err(format!(
                "unmapped sets hold {unmapped_len} entries, segments {unmapped_seen} blocks"
            ));
        }
        if mapped_recount != self.mapped_bytes {
            return Err(format!(
                "mapped bytes kept {}, recount {mapped_recount}",
                self.mapped_bytes
            ));
        }
        let set_len = self.small.len() + self.large.len();
        if set_len != free_seen {
            return Err(format!(
                "free sets hold {set_len} entries, segments {free_seen} free blocks"
            ));
        }
        if pending_seen != self.pending.len() as u64 {
            return Err(format!(
                "pending queue holds {}, blocks count {pending_seen}",
                self.pending.len()
            ));
        }
        let cur = |a: &crate::stats::StatArray| [a[0].current, a[1].current, a[2].current];
        let st = &self.stats;
        let pairs = [
            ("allocation", &st.allocation, &recount.allocation),
            ("active", &st.active, &recount.active),
            (
                "inactive_split",
                &st.inactive_split,
                &recount.inactive_split,
            ),
            (
                "allocated_bytes",
                &st.allocated_bytes,
                &recount.allocated_bytes,
            ),
            ("active_bytes", &st.active_bytes, &recount.active_bytes),
            (
                "inactive_split_bytes",
                &st.inactive_split_bytes,
                &recount.inactive_split_bytes,
            ),
            (
                "requested_bytes",
                &st.requested_bytes,
                &recount.requested_bytes,
            ),
        ];
        for (name, have, want) in pairs {
            if cur(have) != cur(want) {
                return Err(format!(
                    "stat {name}: kept {:?}, recount {:?}",
                    cur(have),
                    cur(want)
                ));
            }
            for s in have.iter() {
                if s.peak < s.current || s.current < 0 {
                    return Err(format!("stat {name}: bad peak/current {s:?}"));
                }
            }
        }
        if st.oversize_allocations.current != recount.oversize_allocations.current {
            return Err("stat oversize_allocations differs from recount".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
