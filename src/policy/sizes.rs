//! Sizes: the constants of the pools, rounding a request (`roundup_power2_divisions`
//! included) and the segment size it gets. Pure arithmetic: no state, no stream.

use super::*;

/// Every block size is a multiple of this.
pub const MIN_BLOCK_SIZE: u64 = 512;

/// Requests up to this size are served from the small pool.
pub const SMALL_SIZE: u64 = 1 << 20;

/// Segment size of the small pool.
pub const SMALL_BUFFER: u64 = 2 << 20;

/// Segment size of the large pool for requests below [`MIN_LARGE_ALLOC`].
pub const LARGE_BUFFER: u64 = 20 << 20;

/// Requests at least this large get a segment of their own size (rounded to [`ROUND_LARGE`]).
pub const MIN_LARGE_ALLOC: u64 = 10 << 20;

/// Rounding of large segments.
pub const ROUND_LARGE: u64 = 2 << 20;

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
#[inline]
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
    #[inline]
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
