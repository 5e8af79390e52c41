//! The device and stream table: each device's stream slots (an open-addressed table written
//! once per stream, so a lookup is plain loads), its pointer map for raw allocations (sharded
//! by address), and its ledger. No allocation decisions here.

use super::*;

pub(super) const POINTER_SHARDS: usize = 64;

pub(super) struct StreamSlot {
    pub(super) stream: StreamId,
    pub(super) pools: Mutex<StreamPools>,
}

#[derive(Clone, Copy)]
pub(super) struct RawEntry {
    pub(super) slot: u32,
    pub(super) block: BlockId,
}

/// Raw (C-layer) allocations of a device whose address hashes here: address → block.
pub(super) type PointerShard = CachePadded<Mutex<FxHashMap<u64, RawEntry>>>;

pub(super) struct Device {
    pub(super) index: usize,
    pub(super) slots: Box<[OnceLock<CachePadded<StreamSlot>>]>,
    pub(super) insert_lock: Mutex<()>,
    /// Reserved bytes, driver calls, segment statistics and history, booked together.
    pub(super) ledger: Ledger,
    pub(super) fraction: Mutex<Option<f64>>,
    pub(super) num_alloc_retries: AtomicU64,
    pub(super) num_sync_all_streams: AtomicU64,
    pub(super) pointers: Box<[PointerShard]>,
    /// Page size of expandable segments (0: they are off).
    pub(super) granularity: u64,
}

#[inline]
pub(super) fn stream_hash(stream: StreamId) -> usize {
    (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
}

#[inline]
pub(super) fn pointer_shard(ptr: u64) -> usize {
    ((ptr >> 9).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % POINTER_SHARDS
}

impl Device {
    /// `oversize`: the segment size from which segments count as oversize.
    pub(super) fn new(index: usize, granularity: u64, oversize: u64) -> Device {
        Device {
            index,
            slots: (0..MAX_STREAMS_PER_DEVICE)
                .map(|_| OnceLock::new())
                .collect(),
            insert_lock: Mutex::new(()),
            ledger: Ledger::new(oversize),
            fraction: Mutex::new(None),
            num_alloc_retries: AtomicU64::new(0),
            num_sync_all_streams: AtomicU64::new(0),
            pointers: (0..POINTER_SHARDS)
                .map(|_| CachePadded::new(Mutex::new(FxHashMap::default())))
                .collect(),
            granularity,
        }
    }

    /// The pools of `stream`, created on first use.
    #[inline]
    pub(super) fn slot(&self, stream: StreamId) -> Result<(u32, &StreamSlot)> {
        let h = stream_hash(stream);
        for k in 0..MAX_STREAMS_PER_DEVICE {
            let i = (h + k) % MAX_STREAMS_PER_DEVICE;
            match self.slots[i].get() {
                Some(s) if s.stream == stream => return Ok((i as u32, s)),
                Some(_) => continue,
                None => return self.insert_slot(stream),
            }
        }
        self.insert_slot(stream)
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
                            pools: Mutex::new(StreamPools::new(stream)),
                        })
                    });
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

    pub(super) fn slots(&self) -> impl Iterator<Item = &StreamSlot> {
        self.slots.iter().filter_map(|s| s.get().map(|s| &**s))
    }
}
