//! The ledger of one device: the single place where device memory coming and going is
//! booked. Each booking moves together what must agree — the reserved bytes (checked against
//! the memory-fraction limit), the driver-call counters, the segment statistics and the event
//! history — so no path can update one and forget another. It decides nothing and calls no
//! driver: the front books what it did.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::error::BackendError;
use crate::history::{Action, Entry, History};
use crate::ids::{PoolKind, StreamId};
use crate::policy::ReleasedSegment;
use crate::stats::{self, SegmentStats};

/// The books of one device.
pub(super) struct Ledger {
    /// Bytes held from the driver (segments and mapped pages), claims in flight included.
    reserved: CachePadded<AtomicU64>,
    /// Most bytes that may be reserved (the memory fraction; `u64::MAX`: none).
    limit: AtomicU64,
    /// The most bytes ever reserved at once (not reset with the peak statistics).
    high_water: AtomicU64,
    segments: Mutex<SegmentStats>,
    device_allocs: AtomicU64,
    device_frees: AtomicU64,
    ooms: AtomicU64,
    history: History,
    /// Segments at least this large count as oversize (`max_split_size`).
    oversize: u64,
}

impl Ledger {
    pub(super) fn new(oversize: u64) -> Ledger {
        Ledger {
            reserved: CachePadded::new(AtomicU64::new(0)),
            limit: AtomicU64::new(u64::MAX),
            high_water: AtomicU64::new(0),
            segments: Mutex::new(SegmentStats::default()),
            device_allocs: AtomicU64::new(0),
            device_frees: AtomicU64::new(0),
            ooms: AtomicU64::new(0),
            history: History::default(),
            oversize,
        }
    }

    pub(super) fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The most bytes ever reserved at once.
    pub(super) fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    pub(super) fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub(super) fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Claim `size` more reserved bytes, within the limit, before asking the driver for them;
    /// [`Ledger::unclaim`] if the driver then refuses.
    pub(super) fn claim(&self, size: u64) -> Result<(), BackendError> {
        let limit = self.limit();
        let mut cur = self.reserved.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(size) > limit {
                return Err(BackendError::OutOfMemory);
            }
            match self.reserved.compare_exchange_weak(
                cur,
                cur + size,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.high_water.fetch_max(cur + size, Ordering::Relaxed);
                    return Ok(());
                }
                Err(v) => cur = v,
            }
        }
    }

    /// The driver refused a claim.
    pub(super) fn unclaim(&self, size: u64) {
        self.reserved.fetch_sub(size, Ordering::AcqRel);
    }

    /// The driver gave a claimed segment.
    pub(super) fn segment_allocated(&self, addr: u64, size: u64, pool: PoolKind, stream: StreamId) {
        self.device_allocs.fetch_add(1, Ordering::Relaxed);
        self.history
            .record(Action::SegmentAlloc, addr, size, stream);
        let mut s = self.segments.lock();
        stats::increase(&mut s.segment, pool, 1);
        stats::increase(&mut s.reserved_bytes, pool, size);
        if size >= self.oversize {
            s.oversize_segments.increase(1);
        }
    }

    /// A segment went back to the driver (or the policy let go of it and the driver's free
    /// failed: it is gone either way).
    pub(super) fn segment_freed(&self, s: &ReleasedSegment) {
        self.unclaim(s.size);
        self.device_frees.fetch_add(1, Ordering::Relaxed);
        self.history
            .record(Action::SegmentFree, s.addr, s.size, s.stream);
        let mut st = self.segments.lock();
        stats::decrease(&mut st.segment, s.pool, 1);
        stats::decrease(&mut st.reserved_bytes, s.pool, s.size);
        if s.size >= self.oversize {
            st.oversize_segments.decrease(1);
        }
    }

    /// An address range was reserved for an expandable segment (it counts as a segment; its
    /// bytes count as they are mapped).
    pub(super) fn range_reserved(&self, pool: PoolKind) {
        stats::increase(&mut self.segments.lock().segment, pool, 1);
    }

    /// An expandable segment's address range was given back.
    pub(super) fn range_released(&self, pool: PoolKind) {
        stats::decrease(&mut self.segments.lock().segment, pool, 1);
    }

    /// Claimed pages were mapped into an expandable segment.
    pub(super) fn pages_mapped(&self, addr: u64, len: u64, pool: PoolKind, stream: StreamId) {
        self.device_allocs.fetch_add(1, Ordering::Relaxed);
        self.history.record(Action::SegmentMap, addr, len, stream);
        stats::increase(&mut self.segments.lock().reserved_bytes, pool, len);
    }

    /// Pages of an expandable segment were unmapped.
    pub(super) fn pages_unmapped(&self, addr: u64, len: u64, pool: PoolKind, stream: StreamId) {
        self.unclaim(len);
        self.device_frees.fetch_add(1, Ordering::Relaxed);
        self.history.record(Action::SegmentUnmap, addr, len, stream);
        stats::decrease(&mut self.segments.lock().reserved_bytes, pool, len);
    }

    /// A block was handed out.
    #[inline]
    pub(super) fn block_allocated(&self, addr: u64, size: u64, stream: StreamId) {
        self.history.record(Action::Alloc, addr, size, stream);
    }

    /// A request failed for lack of memory, after the whole ladder, with `device_free` bytes
    /// free on the device (recorded where PyTorch records it: as the entry's address).
    pub(super) fn out_of_memory(&self, size: u64, device_free: u64, stream: StreamId) {
        self.ooms.fetch_add(1, Ordering::Relaxed);
        self.history.record(Action::Oom, device_free, size, stream);
    }

    /// The caller freed a block (it may still wait for other streams).
    #[inline]
    pub(super) fn free_requested(&self, addr: u64, size: u64, stream: StreamId) {
        self.history
            .record(Action::FreeRequested, addr, size, stream);
    }

    /// A freed block is back in the cache.
    #[inline]
    pub(super) fn block_freed(&self, addr: u64, size: u64, stream: StreamId) {
        self.history
            .record(Action::FreeCompleted, addr, size, stream);
    }

    pub(super) fn segment_stats(&self) -> SegmentStats {
        self.segments.lock().clone()
    }

    /// Driver allocations (segments and page maps) so far.
    pub(super) fn device_allocs(&self) -> u64 {
        self.device_allocs.load(Ordering::Relaxed)
    }

    /// Driver frees (segments and page unmaps) so far.
    pub(super) fn device_frees(&self) -> u64 {
        self.device_frees.load(Ordering::Relaxed)
    }

    pub(super) fn ooms(&self) -> u64 {
        self.ooms.load(Ordering::Relaxed)
    }

    pub(super) fn reset_peak(&self) {
        self.segments.lock().reset_peak();
    }

    /// Accumulated figures (segment `allocated`/`freed`, driver calls, OOMs) to zero.
    pub(super) fn reset_accumulated(&self) {
        self.segments.lock().reset_accumulated();
        for c in [&self.device_allocs, &self.device_frees, &self.ooms] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn set_history(&self, enabled: bool, max_entries: usize) {
        self.history.set(enabled, max_entries);
    }

    pub(super) fn history(&self) -> Vec<Entry> {
        self.history.entries()
    }
}
