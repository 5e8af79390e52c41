//! The C view of the statistics: `MemoryStats` as the header's `cudalloc_stats_t`. Pure
//! conversion; it must not read the allocator or write through any pointer (lib.rs copies the
//! result to the caller).

use core::MemoryStats;

use crate::generated::{self, cudalloc_stat_t, cudalloc_stats_t};

fn c_stat(s: &core::stats::Stat) -> cudalloc_stat_t {
    cudalloc_stat_t {
        current: s.current,
        peak: s.peak,
        allocated: s.allocated,
        freed: s.freed,
    }
}

pub(crate) fn c_stats(m: &MemoryStats) -> cudalloc_stats_t {
    let arr = |a: &core::stats::StatArray| [c_stat(&a[0]), c_stat(&a[1]), c_stat(&a[2])];
    let b = &m.blocks;
    let s = &m.segments;
    cudalloc_stats_t {
        struct_size: std::mem::size_of::<cudalloc_stats_t>(),
        version: generated::CUDALLOC_STATS_VERSION,
        reserved_padding: 0,
        allocation: arr(&b.allocation),
        segment: arr(&s.segment),
        active: arr(&b.active),
        inactive_split: arr(&b.inactive_split),
        allocated_bytes: arr(&b.allocated_bytes),
        reserved_bytes: arr(&s.reserved_bytes),
        active_bytes: arr(&b.active_bytes),
        inactive_split_bytes: arr(&b.inactive_split_bytes),
        requested_bytes: arr(&b.requested_bytes),
        oversize_allocations: c_stat(&b.oversize_allocations),
        oversize_segments: c_stat(&s.oversize_segments),
        num_alloc_retries: m.num_alloc_retries,
        num_ooms: m.num_ooms,
        num_sync_all_streams: m.num_sync_all_streams,
        num_device_alloc: m.num_device_alloc,
        num_device_free: m.num_device_free,
        max_split_size: m.max_split_size,
    }
}
