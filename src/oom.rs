//! The out-of-memory report: every number a user needs to understand the failure, and
//! advice on what to change.

use std::fmt;

/// What the allocator knew when an allocation failed for lack of memory.
#[derive(Debug, Clone, PartialEq)]
pub struct OomError {
    /// Device index.
    pub device: usize,
    /// Bytes the caller asked for.
    pub requested: u64,
    /// The request after rounding (the block size that was looked for).
    pub rounded: u64,
    /// Size of the segment that was asked of the driver.
    pub segment_size: u64,
    /// Device total capacity (driver's figure).
    pub device_total: u64,
    /// Device free memory (driver's figure) at the time of failure.
    pub device_free: u64,
    /// Bytes allocated to callers (rounded block sizes).
    pub allocated: u64,
    /// Bytes reserved from the driver by this allocator.
    pub reserved: u64,
    /// Reserved bytes not allocated to anyone (free blocks inside segments, plus blocks
    /// waiting for their stream events).
    pub reserved_free: u64,
    /// The largest free block in the cache, on any stream.
    pub largest_free_block: u64,
    /// The per-process limit in force (memory fraction × total), `None` when unlimited.
    pub limit: Option<u64>,
    /// The `max_split_size_mb` in force, `u64::MAX` when unlimited.
    pub max_split_size: u64,
}

/// Human-readable byte count with two decimals, PyTorch style (`2.00 GiB`).
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

impl OomError {
    /// Whether fragmentation, not total use, is the cause: the cache holds enough free bytes
    /// for the request, but no single free block fits it.
    pub fn is_fragmentation(&self) -> bool {
        self.reserved_free >= self.rounded && self.largest_free_block < self.rounded
    }

    /// What the user can do about it, in one or two sentences.
    pub fn advice(&self) -> String {
        if self.is_fragmentation() {
            // A max_split_size at or below the request keeps large blocks whole, so a
            // later request of this size finds one instead of a splinter.
            let suggest_mb = (self.rounded >> 20).max(21);
            format!(
                "This is fragmentation: {} is reserved but free, more than the {} requested, \
                 yet the largest free block is only {}. Set \
                 CUDALLOC_CONF=expandable_segments:True (free pages are given back and mapped \
                 where a request needs them; `cudalloc replay --suggest` on a snapshot shows \
                 what each setting reserves), or max_split_size_mb:{} (blocks of that size and \
                 above are never split) or roundup_power2_divisions:4 (fewer distinct sizes), \
                 or call empty_cache() between phases.",
                format_bytes(self.reserved_free),
                format_bytes(self.rounded),
                format_bytes(self.largest_free_block),
                suggest_mb
            )
        } else if let Some(limit) = self.limit.filter(|l| *l < self.device_total) {
            format!(
                "The per-process memory fraction limits this process to {} of {}; raise it \
                 with set_memory_fraction, or reduce the working set (smaller batch, \
                 activation checkpointing, lower precision).",
                format_bytes(limit),
                format_bytes(self.device_total)
            )
        } else {
            "The live data does not fit: reduce the working set (smaller batch, activation \
             checkpointing, lower precision), or free tensors that are no longer needed."
                .to_string()
        }
    }
}

impl fmt::Display for OomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CUDA out of memory. Tried to allocate {} (rounded to {}). GPU {} has a total \
             capacity of {} of which {} is free. Of the allocated memory {} is allocated by \
             cudalloc, and {} is reserved by cudalloc but unallocated; the largest free block \
             is {}.",
            format_bytes(self.requested),
            format_bytes(self.rounded),
            self.device,
            format_bytes(self.device_total),
            format_bytes(self.device_free),
            format_bytes(self.allocated),
            format_bytes(self.reserved_free),
            format_bytes(self.largest_free_block),
        )?;
        if let Some(limit) = self.limit {
            write!(f, " The process is limited to {}.", format_bytes(limit))?;
        }
        write!(f, " {}", self.advice())
    }
}

impl std::error::Error for OomError {}
