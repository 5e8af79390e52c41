//! The device and stream table: each device's stream slots (an open-addressed table written
//! once per stream, so a lookup is plain loads), each stream's pools with its pointer map for
//! raw allocations (under the same lock), and the device's ledger. No allocation decisions
//! here.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicUsize};

use super::raw_map::RawMap;
use super::stream_lock::{RawStreamLock, StreamLock};
use super::*;

/// Raw allocations a stream's pointer map has room for from the start.
const RAW_CAPACITY: usize = 256;

pub(super) struct StreamSlot {
    pub(super) stream: StreamId,
    pools: StreamLock<Pools>,
}

/// A stream's pools, locked.
pub(super) type PoolsGuard<'a> = lock_api::MutexGuard<'a, RawStreamLock, Pools>;

impl StreamSlot {
    /// Lock the stream's pools, a parked free settled (what every path but the cached
    /// malloc and free wants: statistics, snapshots, release and growth see the pools as
    /// if every free had been coalesced).
    #[inline]
    pub(super) fn lock(&self) -> PoolsGuard<'_> {
        let mut g = self.pools.lock();
        g.policy.settle();
        g
    }

    /// [`StreamSlot::lock`] if the lock is free now.
    #[inline]
    pub(super) fn try_lock(&self) -> Option<PoolsGuard<'_>> {
        let mut g = self.pools.try_lock()?;
        g.policy.settle();
        Some(g)
    }

    /// Lock the stream's pools as they are, a park left in place: only for the cached
    /// malloc and free, which call nothing of the policy that needs it settled (`try_alloc`
    /// and `free` settle what they must themselves).
    #[inline]
    pub(super) fn lock_hot(&self) -> PoolsGuard<'_> {
        self.pools.lock()
    }
}

/// What one stream's lock guards: the policy's pools and the raw (C-layer) allocations
/// made on the stream, address → block. Keeping the pointer map under the pools' lock makes
/// a raw malloc or free one lock, not two (the device-wide sharded map it replaced cost a
/// second lock per call; `examples/pairs --raw`, small mix: 280 → 242 ns a pair together
/// with the plain-data blocks).
pub(super) struct Pools {
    pub(super) policy: StreamPools,
    pub(super) raw: RawMap,
}

impl Deref for Pools {
    type Target = StreamPools;
    #[inline]
    fn deref(&self) -> &StreamPools {
        &self.policy
    }
}

impl DerefMut for Pools {
    #[inline]
    fn deref_mut(&mut self) -> &mut StreamPools {
        &mut self.policy
    }
}

pub(super) struct Device {
    pub(super) index: usize,
    pub(super) slots: Box<[OnceLock<CachePadded<StreamSlot>>]>,
    /// Indices of the initialized slots, in creation order (the first `live` entries), so
    /// a walk over the streams does not look at every empty slot.
    order: Box<[AtomicU32]>,
    live: AtomicUsize,
    pub(super) insert_lock: Mutex<()>,
    /// Reserved bytes, driver calls, segment statistics and history, booked together.
    pub(super) ledger: Ledger,
    pub(super) fraction: Mutex<Option<f64>>,
    pub(super) num_alloc_retries: AtomicU64,
    pub(super) num_sync_all_streams: AtomicU64,
    /// Page size of expandable segments (0: they are off).
    pub(super) granularity: u64,
}

#[inline]
pub(super) fn stream_hash(stream: StreamId) -> usize {
    (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
}

impl Device {
    /// `oversize`: the segment size from which segments count as oversize.
    pub(super) fn new(index: usize, granularity: u64, oversize: u64) -> Device {
        Device {
            index,
            slots: (0..MAX_STREAMS_PER_DEVICE)
                .map(|_| OnceLock::new())
                .collect(),
            order: (0..MAX_STREAMS_PER_DEVICE)
                .map(|_| AtomicU32::new(0))
                .collect(),
            live: AtomicUsize::new(0),
            insert_lock: Mutex::new(()),
            ledger: Ledger::new(oversize),
            fraction: Mutex::new(None),
            num_alloc_retries: AtomicU64::new(0),
            num_sync_all_streams: AtomicU64::new(0),
            granularity,
        }
    }

    /// The pools of `stream`, created on first use.
    #[inline]
    pub(super) fn slot(&self, stream: StreamId) -> Result<(u32, &StreamSlot)> {
        match self.find_slot(stream) {
            Some(found) => Ok(found),
            None => self.insert_slot(stream),
        }
    }

    /// The pools of `stream` if it has any (creates nothing).
    #[inline]
    pub(super) fn find_slot(&self, stream: StreamId) -> Option<(u32, &StreamSlot)> {
        let h = stream_hash(stream);
        for k in 0..MAX_STREAMS_PER_DEVICE {
            let i = (h + k) % MAX_STREAMS_PER_DEVICE;
            match self.slots[i].get() {
                Some(s) if s.stream == stream => return Some((i as u32, s)),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }

    #[cold]
    pub(super) fn insert_slot(&self, stream: StreamId) -> Result<(u32, &StreamSlot)> {
        let _g = self.insert_lock.lock();
        let h = stream_hash(stream);
        for k in 0..MAX_STREAMS_PER_DEVICE {
            let i = (h + k) % MAX_STREAMS_PER_DEVICE;
            match self.slots[i].get() {
                Some(s) if s.stream == stream => return Ok((i as u32, s)),
                Some(_) => continue,
                None => {
                    let s = self.slots[i].get_or_init(|| {
                        CachePadded::new(StreamSlot {
                            stream,
                            pools: StreamLock::new(Pools {
                                // Every lock but the cached malloc's and free's settles.
                                policy: StreamPools::parking(stream),
                                // Sized now, with the stream's other tables, rather than
                                // on the first raw malloc: a small table grown then sat
                                // next to another stream's and two threads on two streams
                                // contended on it (vs_pytorch's C ABI threads: 1.04x).
                                raw: RawMap::with_capacity(RAW_CAPACITY),
                            }),
                        })
                    });
                    // Under the insert lock: one writer; readers see `live` after the index.
                    let n = self.live.load(Ordering::Relaxed);
                    self.order[n].store(i as u32, Ordering::Relaxed);
                    self.live.store(n + 1, Ordering::Release);
                    return Ok((i as u32, s));
                }
            }
        }
        Err(Error::TooManyStreams {
            device: self.index,
            limit: MAX_STREAMS_PER_DEVICE,
        })
    }

    pub(super) fn slot_at(&self, slot: u32) -> &StreamSlot {
        // Slots referenced by allocations were initialized before the allocation existed
        // and are never cleared.
        self.slots[slot as usize]
            .get()
            .expect("allocation refers to an initialized stream slot")
    }

    /// Every stream's slot, in table order (the order the release and unmapping steps
    /// visit streams in, so it stays fixed: the replays' figures depend on it).
    pub(super) fn slots(&self) -> impl Iterator<Item = &StreamSlot> {
        self.slots.iter().filter_map(|s| s.get().map(|s| &**s))
    }

    /// Every stream's slot with its index, in creation order, without looking at the
    /// empty slots (for finding a raw pointer's stream).
    pub(super) fn indexed_slots(&self) -> impl Iterator<Item = (u32, &StreamSlot)> {
        let n = self.live.load(Ordering::Acquire);
        self.order[..n].iter().map(|i| {
            let i = i.load(Ordering::Relaxed);
            (i, self.slot_at(i))
        })
    }
}
