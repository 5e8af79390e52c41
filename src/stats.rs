//! Statistics with PyTorch's names and meaning (`torch.cuda.memory_stats()`).
//!
//! A [`Stat`] has `current`, `peak`, `allocated` (sum of increases) and `freed` (sum of
//! decreases). Most stats come in three flavours: `all`, `small_pool`, `large_pool`
//! ([`StatArray`]). This module only holds numbers; the policy and the front decide when
//! they change.

use std::collections::BTreeMap;

use crate::ids::PoolKind;

/// One statistic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    /// Value now.
    pub current: i64,
    /// Highest `current` since creation or the last peak reset.
    pub peak: i64,
    /// Sum of all increases since creation or the last accumulated reset.
    pub allocated: i64,
    /// Sum of all decreases since creation or the last accumulated reset.
    pub freed: i64,
}

impl Stat {
    /// Add `n` (n ≥ 0).
    #[inline]
    pub fn increase(&mut self, n: u64) {
        let n = n as i64;
        self.current += n;
        self.allocated += n;
        if self.current > self.peak {
            self.peak = self.current;
        }
    }

    /// Subtract `n` (n ≥ 0).
    #[inline]
    pub fn decrease(&mut self, n: u64) {
        let n = n as i64;
        self.current -= n;
        self.freed += n;
    }

    /// `n` cycles of a decrease followed by the same increase, booked at once: the running
    /// totals move, `current` does not, and neither does `peak` (each increase only brings
    /// `current` back to a value it had).
    #[inline]
    pub fn cycle(&mut self, n: u64) {
        let n = n as i64;
        self.allocated += n;
        self.freed += n;
    }

    /// A decrease by `old` followed by an increase by `new`, booked in one step (the same
    /// totals, `current` and `peak` as the two).
    #[inline]
    pub fn swap(&mut self, old: u64, new: u64) {
        let (old, new) = (old as i64, new as i64);
        self.current += new - old;
        self.allocated += new;
        self.freed += old;
        if self.current > self.peak {
            self.peak = self.current;
        }
    }

    /// Raise `peak` to `value` if it is below.
    #[inline]
    pub fn peak_at_least(&mut self, value: i64) {
        if value > self.peak {
            self.peak = value;
        }
    }

    /// Peak back to current.
    pub fn reset_peak(&mut self) {
        self.peak = self.current;
    }

    /// Allocated and freed back to zero.
    pub fn reset_accumulated(&mut self) {
        self.allocated = 0;
        self.freed = 0;
    }

    /// Sum of two independently kept stats. `peak` is the sum of the peaks: exact when at
    /// most one of them ever changed, otherwise an upper bound of the combined peak.
    pub fn merged(&self, o: &Stat) -> Stat {
        Stat {
            current: self.current + o.current,
            peak: self.peak + o.peak,
            allocated: self.allocated + o.allocated,
            freed: self.freed + o.freed,
        }
    }
}

/// Index 0: all; 1: small pool; 2: large pool.
pub type StatArray = [Stat; 3];

/// Update a stat array for one pool (and `all`).
#[inline]
pub fn increase(a: &mut StatArray, pool: PoolKind, n: u64) {
    a[0].increase(n);
    a[pool.stat_index()].increase(n);
}

/// Update a stat array for one pool (and `all`).
#[inline]
pub fn decrease(a: &mut StatArray, pool: PoolKind, n: u64) {
    a[0].decrease(n);
    a[pool.stat_index()].decrease(n);
}

/// [`Stat::cycle`] for one pool (and `all`).
#[inline]
pub fn cycle(a: &mut StatArray, pool: PoolKind, n: u64) {
    a[0].cycle(n);
    a[pool.stat_index()].cycle(n);
}

/// [`Stat::swap`] for one pool (and `all`).
#[inline]
pub fn swap(a: &mut StatArray, pool: PoolKind, old: u64, new: u64) {
    a[0].swap(old, new);
    a[pool.stat_index()].swap(old, new);
}

fn merge_arrays(a: &StatArray, b: &StatArray) -> StatArray {
    [a[0].merged(&b[0]), a[1].merged(&b[1]), a[2].merged(&b[2])]
}

/// The block-side statistics one stream's pools keep (under that stream's lock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Allocated blocks (handed out, not yet freed by the caller).
    pub allocation: StatArray,
    /// Active blocks: allocated, or freed but waiting on stream events.
    pub active: StatArray,
    /// Free blocks that are part of a split segment (cannot be released alone).
    pub inactive_split: StatArray,
    /// Bytes of allocated blocks (rounded sizes).
    pub allocated_bytes: StatArray,
    /// Bytes of active blocks.
    pub active_bytes: StatArray,
    /// Bytes of inactive split blocks.
    pub inactive_split_bytes: StatArray,
    /// Bytes the callers asked for, of active blocks.
    pub requested_bytes: StatArray,
    /// Allocations of at least `max_split_size`.
    pub oversize_allocations: Stat,
}

impl BlockStats {
    fn arrays_mut(&mut self) -> [&mut StatArray; 7] {
        [
            &mut self.allocation,
            &mut self.active,
            &mut self.inactive_split,
            &mut self.allocated_bytes,
            &mut self.active_bytes,
            &mut self.inactive_split_bytes,
            &mut self.requested_bytes,
        ]
    }

    /// Merge another stream's stats into this one.
    pub fn merge(&mut self, o: &BlockStats) {
        self.allocation = merge_arrays(&self.allocation, &o.allocation);
        self.active = merge_arrays(&self.active, &o.active);
        self.inactive_split = merge_arrays(&self.inactive_split, &o.inactive_split);
        self.allocated_bytes = merge_arrays(&self.allocated_bytes, &o.allocated_bytes);
        self.active_bytes = merge_arrays(&self.active_bytes, &o.active_bytes);
        self.inactive_split_bytes =
            merge_arrays(&self.inactive_split_bytes, &o.inactive_split_bytes);
        self.requested_bytes = merge_arrays(&self.requested_bytes, &o.requested_bytes);
        self.oversize_allocations = self.oversize_allocations.merged(&o.oversize_allocations);
    }

    /// Peaks back to current values.
    pub fn reset_peak(&mut self) {
        for a in self.arrays_mut() {
            a.iter_mut().for_each(Stat::reset_peak);
        }
        self.oversize_allocations.reset_peak();
    }

    /// Allocated/freed counters back to zero.
    pub fn reset_accumulated(&mut self) {
        for a in self.arrays_mut() {
            a.iter_mut().for_each(Stat::reset_accumulated);
        }
        self.oversize_allocations.reset_accumulated();
    }
}

/// The segment-side statistics a device keeps (changed only on the slow path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Segments obtained from the driver.
    pub segment: StatArray,
    /// Bytes of those segments.
    pub reserved_bytes: StatArray,
    /// Segments of at least `max_split_size`.
    pub oversize_segments: Stat,
}

impl SegmentStats {
    /// Peaks back to current values.
    pub fn reset_peak(&mut self) {
        for a in [&mut self.segment, &mut self.reserved_bytes] {
            a.iter_mut().for_each(Stat::reset_peak);
        }
        self.oversize_segments.reset_peak();
    }

    /// Allocated/freed counters back to zero.
    pub fn reset_accumulated(&mut self) {
        for a in [&mut self.segment, &mut self.reserved_bytes] {
            a.iter_mut().for_each(Stat::reset_accumulated);
        }
        self.oversize_segments.reset_accumulated();
    }
}

/// All statistics of one device, as `memory_stats()` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Block-side stats, summed over the device's streams.
    pub blocks: BlockStats,
    /// Segment-side stats.
    pub segments: SegmentStats,
    /// Allocations that needed the cache released and the driver call retried.
    pub num_alloc_retries: u64,
    /// Allocations that failed for lack of memory.
    pub num_ooms: u64,
    /// Times every outstanding event was waited for (part of the OOM retry).
    pub num_sync_all_streams: u64,
    /// Segment allocations from the driver (`cuMemAlloc`).
    pub num_device_alloc: u64,
    /// Segment frees to the driver (`cuMemFree`).
    pub num_device_free: u64,
    /// `max_split_size` in bytes; -1 when unlimited (as PyTorch reports `SIZE_MAX`).
    pub max_split_size: i64,
}

impl MemoryStats {
    /// The flat dictionary `torch.cuda.memory_stats()` returns, same keys, same meaning.
    pub fn to_map(&self) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        let b = &self.blocks;
        let s = &self.segments;
        let arrays: [(&str, &StatArray); 9] = [
            ("allocation", &b.allocation),
            ("segment", &s.segment),
            ("active", &b.active),
            ("inactive_split", &b.inactive_split),
            ("allocated_bytes", &b.allocated_bytes),
            ("reserved_bytes", &s.reserved_bytes),
            ("active_bytes", &b.active_bytes),
            ("inactive_split_bytes", &b.inactive_split_bytes),
            ("requested_bytes", &b.requested_bytes),
        ];
        for (name, arr) in arrays {
            for (pool, st) in ["all", "small_pool", "large_pool"].iter().zip(arr.iter()) {
                put(&mut m, &format!("{name}.{pool}"), st);
            }
        }
        put(&mut m, "oversize_allocations", &b.oversize_allocations);
        put(&mut m, "oversize_segments", &s.oversize_segments);
        m.insert("num_alloc_retries".into(), self.num_alloc_retries as i64);
        m.insert("num_ooms".into(), self.num_ooms as i64);
        m.insert(
            "num_sync_all_streams".into(),
            self.num_sync_all_streams as i64,
        );
        m.insert("num_device_alloc".into(), self.num_device_alloc as i64);
        m.insert("num_device_free".into(), self.num_device_free as i64);
        m.insert("max_split_size".into(), self.max_split_size);
        m
    }
}

fn put(m: &mut BTreeMap<String, i64>, prefix: &str, st: &Stat) {
    m.insert(format!("{prefix}.current"), st.current);
    m.insert(format!("{prefix}.peak"), st.peak);
    m.insert(format!("{prefix}.allocated"), st.allocated);
    m.insert(format!("{prefix}.freed"), st.freed);
}
