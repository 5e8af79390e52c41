//! The thread-safe front: per-device and per-stream state, RAII allocations, raw
//! pointer-based allocation for the C layer, the out-of-memory retry ladder, statistics and
//! reports.
//!
//! Locking: each (device, stream) has its own pools behind its own mutex, so threads on
//! different streams or devices do not serialize on one lock. Streams are found through a
//! fixed open-addressed table whose slots are written once, so the lookup is plain loads.
//! Slow paths (new segments, releasing cache, statistics) take one stream lock at a time,
//! never two, so there is no lock ordering to get wrong.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::backend::{Backend, StreamId};
use crate::config::Config;
use crate::error::{BackendError, Error, Result};
use crate::history::{Action, Entry, History};
use crate::oom::OomError;
use crate::policy::{
    BlockId, BlockState, Completed, FreeOutcome, PoolKind, ReleasedSegment, Request, SegmentInfo,
    StreamPools, Tracking,
};
use crate::stats::{self, BlockStats, MemoryStats, SegmentStats};

/// Streams per device the allocator can serve.
pub const MAX_STREAMS_PER_DEVICE: usize = 1024;
const RAW_SHARDS: usize = 64;
/// Largest request accepted (anything above cannot be a real device allocation).
pub const MAX_REQUEST: u64 = 1 << 56;

struct Shard {
    stream: StreamId,
    pools: Mutex<StreamPools>,
}

#[derive(Clone, Copy)]
struct RawEntry {
    slot: u32,
    block: BlockId,
}

/// Raw (C-layer) allocations of a device whose address hashes here: address → block.
type RawShard = CachePadded<Mutex<FxHashMap<u64, RawEntry>>>;

struct Device {
    index: usize,
    slots: Box<[OnceLock<CachePadded<Shard>>]>,
    insert_lock: Mutex<()>,
    seg_stats: Mutex<SegmentStats>,
    reserved: CachePadded<AtomicU64>,
    limit: AtomicU64,
    fraction: Mutex<Option<f64>>,
    num_alloc_retries: AtomicU64,
    num_ooms: AtomicU64,
    num_sync_all_streams: AtomicU64,
    num_device_alloc: AtomicU64,
    num_device_free: AtomicU64,
    raw: Box<[RawShard]>,
    history: History,
    /// Page size of expandable segments (0: they are off).
    granularity: u64,
}

#[inline]
fn stream_hash(stream: StreamId) -> usize {
    (stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
}

#[inline]
fn raw_shard(ptr: u64) -> usize {
    ((ptr >> 9).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % RAW_SHARDS
}

impl Device {
    fn new(index: usize, granularity: u64) -> Device {
        Device {
            index,
            slots: (0..MAX_STREAMS_PER_DEVICE)
                .map(|_| OnceLock::new())
                .collect(),
            insert_lock: Mutex::new(()),
            seg_stats: Mutex::new(SegmentStats::default()),
            reserved: CachePadded::new(AtomicU64::new(0)),
            limit: AtomicU64::new(u64::MAX),
            fraction: Mutex::new(None),
            num_alloc_retries: AtomicU64::new(0),
            num_ooms: AtomicU64::new(0),
            num_sync_all_streams: AtomicU64::new(0),
            num_device_alloc: AtomicU64::new(0),
            num_device_free: AtomicU64::new(0),
            raw: (0..RAW_SHARDS)
                .map(|_| CachePadded::new(Mutex::new(FxHashMap::default())))
                .collect(),
            history: History::default(),
            granularity,
        }
    }

    /// The pools of `stream`, created on first use.
    #[inline]
    fn shard(&self, stream: StreamId) -> Result<(u32, &Shard)> {
        let h = stream_hash(stream);
        for k in 0..MAX_STREAMS_PER_DEVICE {
            let i = (h + k) % MAX_STREAMS_PER_DEVICE;
            match self.slots[i].get() {
                Some(s) if s.stream == stream => return Ok((i as u32, s)),
                Some(_) => continue,
                None => return self.insert_shard(stream),
            }
        }
        self.insert_shard(stream)
    }

    #[cold]
    fn insert_shard(&self, stream: StreamId) -> Result<(u32, &Shard)> {
        let _g = self.insert_lock.lock();
        let h = stream_hash(stream);
        for k in 0..MAX_STREAMS_PER_DEVICE {
            let i = (h + k) % MAX_STREAMS_PER_DEVICE;
            match self.slots[i].get() {
                Some(s) if s.stream == stream => return Ok((i as u32, s)),
                Some(_) => continue,
                None => {
                    let s = self.slots[i].get_or_init(|| {
                        CachePadded::new(Shard {
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

    fn shard_at(&self, slot: u32) -> &Shard {
        // Slots referenced by allocations were initialized before the allocation existed
        // and are never cleared.
        self.slots[slot as usize]
            .get()
            .expect("allocation refers to an initialized stream slot")
    }

    fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.slots.iter().filter_map(|s| s.get().map(|s| &**s))
    }
}

/// A caching allocator over a [`Backend`]. `Send + Sync`; share it by reference or `Arc`.
///
/// ```
/// use cudalloc::{CachingAllocator, Config, SimBackend};
/// let alloc = CachingAllocator::new(SimBackend::new(1 << 30), Config::default()).unwrap();
/// {
///     let a = alloc.malloc(1000, 0).unwrap(); // 1000 bytes on the default stream
///     assert_eq!(a.size(), 1000);
/// } // freed into the cache here
/// let b = alloc.malloc(1000, 0).unwrap(); // served from the cache: no new segment
/// assert_eq!(alloc.memory_stats(0).unwrap().num_device_alloc, 1);
/// drop(b);
/// alloc.empty_cache(None).unwrap();
/// assert_eq!(alloc.backend().counts().used, 0);
/// ```
pub struct CachingAllocator<B: Backend> {
    backend: B,
    config: Config,
    devices: Box<[Device]>,
    deferred: Mutex<Option<Error>>,
    used: AtomicBool,
}

impl<B: Backend> std::fmt::Debug for CachingAllocator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reserved: Vec<u64> = self
            .devices
            .iter()
            .map(|d| d.reserved.load(Ordering::Relaxed))
            .collect();
        f.debug_struct("CachingAllocator")
            .field("config", &self.config.to_string())
            .field("devices", &self.devices.len())
            .field("reserved", &reserved)
            .finish()
    }
}

/// Memory handed out by [`CachingAllocator::malloc`]; returned to the cache on drop.
pub struct Allocation<'a, B: Backend> {
    alloc: &'a CachingAllocator<B>,
    device: u32,
    slot: u32,
    block: BlockId,
    ptr: u64,
    size: u64,
}

impl<B: Backend> std::fmt::Debug for Allocation<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation")
            .field("device", &self.device)
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .finish()
    }
}

impl<B: Backend> Allocation<'_, B> {
    /// Device address.
    #[inline]
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes requested.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Device index.
    pub fn device(&self) -> usize {
        self.device as usize
    }

    /// Stream the allocation belongs to.
    pub fn stream(&self) -> StreamId {
        self.alloc.devices[self.device as usize]
            .shard_at(self.slot)
            .stream
    }

    /// Mark use on another stream: on free, the block waits for the work queued on
    /// `stream` so far before it is reused.
    pub fn record_stream(&self, stream: StreamId) {
        let dev = &self.alloc.devices[self.device as usize];
        dev.shard_at(self.slot)
            .pools
            .lock()
            .record_stream(self.block, stream);
    }

    /// Free now, reporting any error (dropping reports it later through
    /// [`CachingAllocator::take_deferred_error`]).
    ///
    /// # Errors
    /// A backend error while recording events for other streams.
    pub fn free(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        this.alloc
            .free_block(this.device as usize, this.slot, this.block)
    }
}

impl<B: Backend> Drop for Allocation<'_, B> {
    fn drop(&mut self) {
        if let Err(e) = self
            .alloc
            .free_block(self.device as usize, self.slot, self.block)
        {
            *self.alloc.deferred.lock() = Some(e);
        }
    }
}

impl<B: Backend> CachingAllocator<B> {
    /// A new allocator over `backend`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for `expandable_segments` on a backend without virtual-memory
    /// management.
    pub fn new(backend: B, config: Config) -> Result<Self> {
        let n = backend.device_count();
        let mut granularity = vec![0u64; n];
        if config.expandable_segments {
            for (d, g) in granularity.iter_mut().enumerate() {
                *g = match backend.vmm_granularity(d) {
                    Ok(g) if g > 0 => g,
                    Ok(_) | Err(BackendError::Unsupported(_)) => {
                        return Err(Error::Unsupported(format!(
                            "expandable_segments needs virtual memory management, which \
                             device {d}'s backend does not provide"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
            }
        }
        Ok(CachingAllocator {
            backend,
            config,
            devices: (0..n).map(|d| Device::new(d, granularity[d])).collect(),
            deferred: Mutex::new(None),
            used: AtomicBool::new(false),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Whether anything was ever allocated.
    pub fn has_been_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// An error that happened in a `Drop` (of an [`Allocation`]), if any; taking it clears it.
    pub fn take_deferred_error(&self) -> Option<Error> {
        self.deferred.lock().take()
    }

    fn dev(&self, device: usize) -> Result<&Device> {
        self.devices.get(device).ok_or(Error::InvalidDevice {
            device,
            count: self.devices.len(),
        })
    }

    /// Allocate `size` bytes on device 0 for use on `stream`.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when nothing fits even after releasing the cache;
    /// [`Error::InvalidArgument`] for a zero or impossible size; backend errors.
    #[inline]
    pub fn malloc(&self, size: u64, stream: StreamId) -> Result<Allocation<'_, B>> {
        self.malloc_on(0, size, stream)
    }

    /// Allocate `size` bytes on `device` for use on `stream`.
    ///
    /// # Errors
    /// As [`CachingAllocator::malloc`], plus an unknown device.
    #[inline]
    pub fn malloc_on(
        &self,
        device: usize,
        size: u64,
        stream: StreamId,
    ) -> Result<Allocation<'_, B>> {
        let dev = self.dev(device)?;
        let (slot, shard) = dev.shard(stream)?;
        let (block, ptr) = self.alloc_block(dev, shard, size)?;
        Ok(Allocation {
            alloc: self,
            device: device as u32,
            slot,
            block,
            ptr,
            size,
        })
    }

    /// Allocate and return the bare device address; free it with
    /// [`CachingAllocator::free_raw`] (for the C layer).
    ///
    /// # Errors
    /// As [`CachingAllocator::malloc_on`].
    pub fn allocate_raw(&self, device: usize, size: u64, stream: StreamId) -> Result<u64> {
        let dev = self.dev(device)?;
        let (slot, shard) = dev.shard(stream)?;
        let (block, ptr) = self.alloc_block(dev, shard, size)?;
        dev.raw[raw_shard(ptr)]
            .lock()
            .insert(ptr, RawEntry { slot, block });
        Ok(ptr)
    }

    /// Free an address returned by [`CachingAllocator::allocate_raw`].
    ///
    /// # Errors
    /// [`Error::UnknownPointer`] for an address not handed out (or already freed) on that
    /// device — nothing is changed then; backend errors.
    pub fn free_raw(&self, device: usize, ptr: u64) -> Result<()> {
        let dev = self.dev(device)?;
        let e = dev.raw[raw_shard(ptr)]
            .lock()
            .remove(&ptr)
            .ok_or(Error::UnknownPointer(ptr))?;
        self.free_block(device, e.slot, e.block)
    }

    /// Device of a raw allocation, searching every device (for callers that do not know).
    pub fn device_of_raw(&self, ptr: u64) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| d.raw[raw_shard(ptr)].lock().contains_key(&ptr))
    }

    /// Requested size of a raw allocation.
    pub fn raw_size(&self, device: usize, ptr: u64) -> Option<u64> {
        let dev = self.devices.get(device)?;
        let e = *dev.raw[raw_shard(ptr)].lock().get(&ptr)?;
        Some(dev.shard_at(e.slot).pools.lock().block_requested(e.block))
    }

    /// Allocate like [`CachingAllocator::allocate_raw`], but only from the cache: `None` when
    /// that would need a new segment (the LD_PRELOAD shim first makes deferred frees
    /// reusable then).
    ///
    /// # Errors
    /// As [`CachingAllocator::allocate_raw`], except out of memory.
    pub fn allocate_raw_cached(
        &self,
        device: usize,
        size: u64,
        stream: StreamId,
    ) -> Result<Option<u64>> {
        if size == 0 || size > MAX_REQUEST {
            return Err(Error::InvalidArgument(format!(
                "cannot allocate {size} bytes (must be 1..={MAX_REQUEST})"
            )));
        }
        let dev = self.dev(device)?;
        let (slot, shard) = dev.shard(stream)?;
        let req = Request::new(size, &self.config);
        let found = {
            let mut g = shard.pools.lock();
            if g.has_pending() {
                self.process_events(dev, &mut g)?;
            }
            g.try_alloc(&req, &self.config)
                .map(|b| (b, g.block_addr(b)))
        };
        let Some((block, ptr)) = found else {
            return Ok(None);
        };
        self.used.store(true, Ordering::Relaxed);
        dev.history.record(Action::Alloc, ptr, size, stream);
        dev.raw[raw_shard(ptr)]
            .lock()
            .insert(ptr, RawEntry { slot, block });
        Ok(Some(ptr))
    }

    /// Stream a raw allocation belongs to.
    pub fn raw_stream(&self, device: usize, ptr: u64) -> Option<StreamId> {
        let dev = self.devices.get(device)?;
        let e = *dev.raw[raw_shard(ptr)].lock().get(&ptr)?;
        Some(dev.shard_at(e.slot).stream)
    }

    /// `record_stream` for a raw allocation.
    ///
    /// # Errors
    /// [`Error::UnknownPointer`] if `ptr` is not a live raw allocation of `device`.
    pub fn record_stream_raw(&self, device: usize, ptr: u64, stream: StreamId) -> Result<()> {
        let dev = self.dev(device)?;
        let e = *dev.raw[raw_shard(ptr)]
            .lock()
            .get(&ptr)
            .ok_or(Error::UnknownPointer(ptr))?;
        dev.shard_at(e.slot)
            .pools
            .lock()
            .record_stream(e.block, stream);
        Ok(())
    }

    #[inline]
    fn alloc_block(&self, dev: &Device, shard: &Shard, size: u64) -> Result<(BlockId, u64)> {
        let r = self.alloc_block_inner(dev, shard, size);
        match &r {
            Ok((_, ptr)) => dev.history.record(Action::Alloc, *ptr, size, shard.stream),
            Err(Error::OutOfMemory(_)) => dev.history.record(Action::Oom, 0, size, shard.stream),
            Err(_) => {}
        }
        r
    }

    #[inline]
    fn alloc_block_inner(&self, dev: &Device, shard: &Shard, size: u64) -> Result<(BlockId, u64)> {
        if size == 0 || size > MAX_REQUEST {
            return Err(Error::InvalidArgument(format!(
                "cannot allocate {size} bytes (must be 1..={MAX_REQUEST})"
            )));
        }
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        let req = Request::new(size, &self.config);
        {
            let mut g = shard.pools.lock();
            if g.has_pending() {
                self.process_events(dev, &mut g)?;
            }
            if let Some(b) = g.try_alloc(&req, &self.config) {
                return Ok((b, g.block_addr(b)));
            }
        }
        self.alloc_slow(dev, shard, &req)
    }

    #[cold]
    fn alloc_slow(&self, dev: &Device, shard: &Shard, req: &Request) -> Result<(BlockId, u64)> {
        if self.config.garbage_collection_threshold > 0.0 && dev.fraction.lock().is_some() {
            self.garbage_collect(dev)?;
        }
        for attempt in 0..3 {
            {
                let mut g = shard.pools.lock();
                if g.has_pending() {
                    self.process_events(dev, &mut g)?;
                }
                if let Some(b) = g.try_alloc(req, &self.config) {
                    return Ok((b, g.block_addr(b)));
                }
                let grown = if dev.granularity > 0 {
                    self.grow_expandable(dev, &mut g, req)
                } else {
                    self.alloc_segment(dev, req, shard.stream).map(|addr| {
                        let b = g.add_segment_and_alloc(addr, req.segment_size, req, &self.config);
                        (b, addr)
                    })
                };
                match grown {
                    Ok(found) => return Ok(found),
                    Err(BackendError::OutOfMemory) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match attempt {
                0 => {
                    dev.num_alloc_retries.fetch_add(1, Ordering::Relaxed);
                    self.release_cached(dev, false)?;
                }
                1 => self.release_cached(dev, true)?,
                _ => {}
            }
        }
        dev.num_ooms.fetch_add(1, Ordering::Relaxed);
        Err(Error::OutOfMemory(Box::new(self.oom_report(dev, req))))
    }

    /// Count `size` more reserved bytes, within the memory-fraction limit.
    fn reserve_bytes(dev: &Device, size: u64) -> Result<(), BackendError> {
        let limit = dev.limit.load(Ordering::Relaxed);
        let mut cur = dev.reserved.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(size) > limit {
                return Err(BackendError::OutOfMemory);
            }
            match dev.reserved.compare_exchange_weak(
                cur,
                cur + size,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    /// Serve `req` by mapping pages into the stream's expandable segment of its pool
    /// (reserving the segment's address range first if there is none). A failed map
    /// changes nothing: the segment stays as it was.
    fn grow_expandable(
        &self,
        dev: &Device,
        g: &mut StreamPools,
        req: &Request,
    ) -> Result<(BlockId, u64), BackendError> {
        let gran = dev.granularity;
        if g.expandable_segment(req.pool).is_none() {
            let total = self.backend.mem_info(dev.index)?.total;
            // Address space is cheap: reserve well beyond the device's memory so that
            // free pages unmapped in the middle never leave a large request without a
            // contiguous range.
            let want = match req.pool {
                PoolKind::Large => total.saturating_mul(4),
                PoolKind::Small => total / 2,
            };
            let size = want.max(req.rounded).div_ceil(gran).max(1) * gran;
            let addr = self.backend.reserve_range(dev.index, size)?;
            g.add_expandable_segment(addr, size, req.pool, gran);
            stats::increase(&mut dev.seg_stats.lock().segment, req.pool, 1);
        }
        // No free block of this stream serves the request: give back the whole free pages
        // it holds before mapping more, or they would stay mapped beside the new pages,
        // reserved for nothing. (Keeping them only when they add up to less than the
        // request was measured too, and did worse on the shared traces.)
        {
            self.unmap_free_pages(dev, g, false).map_err(|e| match e {
                Error::Backend(b) => b,
                other => BackendError::Driver {
                    code: -1,
                    message: other.to_string(),
                },
            })?;
        }
        let plan = g.plan_map(req, gran).ok_or(BackendError::OutOfMemory)?;
        Self::reserve_bytes(dev, plan.len)?;
        if let Err(e) = self.backend.map_pages(dev.index, plan.addr, plan.len) {
            dev.reserved.fetch_sub(plan.len, Ordering::AcqRel);
            return Err(e);
        }
        dev.num_device_alloc.fetch_add(1, Ordering::Relaxed);
        dev.history
            .record(Action::SegmentMap, plan.addr, plan.len, g.stream());
        stats::increase(&mut dev.seg_stats.lock().reserved_bytes, req.pool, plan.len);
        let b = g.commit_map(plan, req, &self.config);
        Ok((b, g.block_addr(b)))
    }

    /// Unmap every whole free page of the expandable segments of one stream, and give back
    /// the address range of any that has nothing mapped left.
    fn unmap_free_pages(
        &self,
        dev: &Device,
        g: &mut StreamPools,
        release_empty: bool,
    ) -> Result<()> {
        if dev.granularity == 0 {
            return Ok(());
        }
        let mut first_err = None;
        for plan in g.plan_unmap(dev.granularity) {
            match self.backend.unmap_pages(dev.index, plan.addr, plan.len) {
                Ok(()) => {
                    let pool = plan.pool;
                    g.commit_unmap(plan);
                    dev.reserved.fetch_sub(plan.len, Ordering::AcqRel);
                    dev.num_device_free.fetch_add(1, Ordering::Relaxed);
                    dev.history
                        .record(Action::SegmentUnmap, plan.addr, plan.len, g.stream());
                    stats::decrease(&mut dev.seg_stats.lock().reserved_bytes, pool, plan.len);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut empty = Vec::new();
        if release_empty {
            g.release_empty_expandable(&mut empty);
        }
        for r in empty {
            stats::decrease(&mut dev.seg_stats.lock().segment, r.pool, 1);
            if let Err(e) = self.backend.free_range(dev.index, r.addr, r.size) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Ask the backend for a segment, within the memory-fraction limit.
    fn alloc_segment(
        &self,
        dev: &Device,
        req: &Request,
        stream: StreamId,
    ) -> Result<u64, BackendError> {
        let size = req.segment_size;
        Self::reserve_bytes(dev, size)?;
        match self.backend.alloc_segment(dev.index, size) {
            Ok(addr) => {
                dev.num_device_alloc.fetch_add(1, Ordering::Relaxed);
                dev.history.record(Action::SegmentAlloc, addr, size, stream);
                let mut s = dev.seg_stats.lock();
                stats::increase(&mut s.segment, req.pool, 1);
                stats::increase(&mut s.reserved_bytes, req.pool, size);
                if size >= self.config.max_split_size {
                    s.oversize_segments.increase(1);
                }
                Ok(addr)
            }
            Err(e) => {
                dev.reserved.fetch_sub(size, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Return released segments to the driver and account for them. Tries every segment
    /// even if one fails; reports the first failure.
    fn free_segments(&self, dev: &Device, segs: &[ReleasedSegment]) -> Result<()> {
        let mut first_err = None;
        for s in segs {
            let r = self.backend.free_segment(dev.index, s.addr, s.size);
            // Whatever the driver said, the policy no longer has the segment: account for it
            // as gone so the numbers stay consistent (a failed free is reported).
            dev.reserved.fetch_sub(s.size, Ordering::AcqRel);
            dev.num_device_free.fetch_add(1, Ordering::Relaxed);
            dev.history
                .record(Action::SegmentFree, s.addr, s.size, s.stream);
            let mut st = dev.seg_stats.lock();
            stats::decrease(&mut st.segment, s.pool, 1);
            stats::decrease(&mut st.reserved_bytes, s.pool, s.size);
            if s.size >= self.config.max_split_size {
                st.oversize_segments.decrease(1);
            }
            drop(st);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Poll outstanding events of one stream, oldest first, returning blocks whose events
    /// all completed to the cache.
    fn process_events(&self, dev: &Device, g: &mut StreamPools) -> Result<()> {
        while let Some(ev) = g.oldest_pending() {
            if !self.backend.query_event(dev.index, ev)? {
                break;
            }
            if let Some(Completed { freed: Some(f), .. }) = g.complete_oldest_pending() {
                dev.history
                    .record(Action::FreeCompleted, f.addr, f.requested, g.stream());
            }
            self.backend.release_event(dev.index, ev);
        }
        Ok(())
    }

    /// Wait for every outstanding event of one stream and process them.
    fn sync_events(&self, dev: &Device, g: &mut StreamPools) -> Result<()> {
        while let Some(ev) = g.oldest_pending() {
            self.backend.synchronize_event(dev.index, ev)?;
            if let Some(Completed { freed: Some(f), .. }) = g.complete_oldest_pending() {
                dev.history
                    .record(Action::FreeCompleted, f.addr, f.requested, g.stream());
            }
            self.backend.release_event(dev.index, ev);
        }
        Ok(())
    }

    /// Release every entirely free segment of `dev` (waiting for outstanding events first
    /// when `sync`).
    ///
    /// An error on one stream (an event, an unmap) does not stop the others: segments the
    /// policy already let go of must reach [`Self::free_segments`], or they would be lost to
    /// both the policy and the driver and `reserved` would never come down. The first error
    /// is reported. (Found by the fault tests of a helper branch, `tests` 321eea8.)
    fn release_cached(&self, dev: &Device, sync: bool) -> Result<()> {
        if sync {
            dev.num_sync_all_streams.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for shard in dev.shards() {
            let mut g = shard.pools.lock();
            let events = if sync {
                self.sync_events(dev, &mut g)
            } else if g.has_pending() {
                self.process_events(dev, &mut g)
            } else {
                Ok(())
            };
            if let Err(e) = events {
                first_err.get_or_insert(e);
            }
            g.release_free_segments(&mut out);
            if let Err(e) = self.unmap_free_pages(dev, &mut g, true) {
                first_err.get_or_insert(e);
            }
        }
        let freed = self.free_segments(dev, &out);
        match first_err {
            Some(e) => Err(e),
            None => freed,
        }
    }

    /// PyTorch's `garbage_collect_cached_blocks`: when reserved memory exceeds
    /// `garbage_collection_threshold` × the memory-fraction limit, release whole free
    /// large-pool segments, oldest (least recently useful) first.
    fn garbage_collect(&self, dev: &Device) -> Result<()> {
        let limit = dev.limit.load(Ordering::Relaxed);
        let threshold = (self.config.garbage_collection_threshold * limit as f64) as u64;
        let reserved = dev.reserved.load(Ordering::Relaxed);
        if reserved <= threshold {
            return Ok(());
        }
        let target = reserved - threshold;
        if dev.granularity > 0 {
            // Expandable segments carry no per-block age: over the threshold, their free
            // pages all go back.
            for shard in dev.shards() {
                self.unmap_free_pages(dev, &mut shard.pools.lock(), true)?;
            }
        }
        let mut reclaimed = 0u64;
        let mut out = Vec::new();
        for shard in dev.shards() {
            if reclaimed >= target {
                break;
            }
            let mut g = shard.pools.lock();
            let mut cands = g.gc_candidates();
            while reclaimed < target && !cands.is_empty() {
                let avg = cands.iter().map(|c| c.0 as f64).sum::<f64>() / cands.len() as f64;
                let before = out.len();
                cands.retain(|&(age, b)| {
                    if age as f64 >= avg {
                        if let Some(r) = g.release_gc_candidate(b) {
                            reclaimed += r.size;
                            out.push(r);
                        }
                        false
                    } else {
                        true
                    }
                });
                if out.len() == before {
                    break;
                }
            }
        }
        self.free_segments(dev, &out)
    }

    fn free_block(&self, device: usize, slot: u32, block: BlockId) -> Result<()> {
        let dev = &self.devices[device];
        let shard = dev.shard_at(slot);
        let mut g = shard.pools.lock();
        let (addr, size) = (g.block_addr(block), g.block_requested(block));
        dev.history
            .record(Action::FreeRequested, addr, size, shard.stream);
        let n = g.stream_uses(block).len();
        if n == 0 {
            g.free(block, &self.config, Tracking::NONE);
            dev.history
                .record(Action::FreeCompleted, addr, size, shard.stream);
            return Ok(());
        }
        let mut events = Vec::with_capacity(n);
        let mut failed = None;
        for &s in g.stream_uses(block) {
            match self.backend.record_event(dev.index, s) {
                Ok(ev) => events.push(ev),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        // Could not mark some other stream's progress: wait for the whole device instead, so
        // the block is safe to reuse. If even that fails, nothing says the other stream is
        // done with it: the block is never reused.
        let untracked = failed.is_some() && self.backend.synchronize_device(dev.index).is_err();
        let tracking = Tracking {
            events: &events,
            untracked,
        };
        if g.free(block, &self.config, tracking) == FreeOutcome::Cached {
            dev.history
                .record(Action::FreeCompleted, addr, size, shard.stream);
        }
        match failed {
            Some(e) if untracked => Err(Error::Backend(e)),
            _ => Ok(()),
        }
    }

    /// Start (or stop) recording the event history of every device, keeping at most
    /// `max_entries` per device (PyTorch's `_record_memory_history`).
    pub fn record_history(&self, enabled: bool, max_entries: usize) {
        for d in self.devices.iter() {
            d.history.set(enabled, max_entries);
        }
    }

    /// The recorded history of `device`, oldest first.
    ///
    /// # Errors
    /// An unknown device.
    pub fn history(&self, device: usize) -> Result<Vec<Entry>> {
        Ok(self.dev(device)?.history.entries())
    }

    /// Return every entirely free segment to the driver (`device`: one device, or all).
    ///
    /// # Errors
    /// An unknown device; backend errors (every segment is still tried).
    pub fn empty_cache(&self, device: Option<usize>) -> Result<()> {
        match device {
            Some(d) => self.release_cached(self.dev(d)?, false),
            None => {
                let mut res = Ok(());
                for dev in self.devices.iter() {
                    let r = self.release_cached(dev, false);
                    if res.is_ok() {
                        res = r;
                    }
                }
                res
            }
        }
    }

    /// Limit this allocator to `fraction` of the device's total memory (PyTorch's
    /// `set_per_process_memory_fraction`).
    ///
    /// # Errors
    /// A fraction outside `0.0..=1.0`, an unknown device, a backend error.
    pub fn set_memory_fraction(&self, device: usize, fraction: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::InvalidArgument(format!(
                "memory fraction {fraction} is not within 0.0..=1.0"
            )));
        }
        let dev = self.dev(device)?;
        let total = self.backend.mem_info(device)?.total;
        *dev.fraction.lock() = Some(fraction);
        dev.limit
            .store((total as f64 * fraction) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The memory fraction in force, if one was set.
    pub fn memory_fraction(&self, device: usize) -> Option<f64> {
        self.devices.get(device).and_then(|d| *d.fraction.lock())
    }

    /// Statistics of `device`, `torch.cuda.memory_stats()` style.
    ///
    /// Per-stream statistics are kept under each stream's own lock; their `peak` is summed
    /// over streams, which is exact when one stream is in use and an upper bound when
    /// several are. Segment statistics (`segment`, `reserved_bytes`) are device-wide and
    /// exact.
    ///
    /// # Errors
    /// An unknown device.
    pub fn memory_stats(&self, device: usize) -> Result<MemoryStats> {
        let dev = self.dev(device)?;
        let mut blocks = BlockStats::default();
        for shard in dev.shards() {
            blocks.merge(shard.pools.lock().stats());
        }
        Ok(MemoryStats {
            blocks,
            segments: dev.seg_stats.lock().clone(),
            num_alloc_retries: dev.num_alloc_retries.load(Ordering::Relaxed),
            num_ooms: dev.num_ooms.load(Ordering::Relaxed),
            num_sync_all_streams: dev.num_sync_all_streams.load(Ordering::Relaxed),
            num_device_alloc: dev.num_device_alloc.load(Ordering::Relaxed),
            num_device_free: dev.num_device_free.load(Ordering::Relaxed),
            max_split_size: if self.config.max_split_size == u64::MAX {
                -1
            } else {
                self.config.max_split_size as i64
            },
        })
    }

    /// Peaks back to current values.
    ///
    /// # Errors
    /// An unknown device.
    pub fn reset_peak_memory_stats(&self, device: usize) -> Result<()> {
        let dev = self.dev(device)?;
        for shard in dev.shards() {
            shard.pools.lock().stats_mut().reset_peak();
        }
        dev.seg_stats.lock().reset_peak();
        Ok(())
    }

    /// Accumulated counters (`allocated`, `freed`, retries, OOMs, driver calls) to zero.
    ///
    /// # Errors
    /// An unknown device.
    pub fn reset_accumulated_memory_stats(&self, device: usize) -> Result<()> {
        let dev = self.dev(device)?;
        for shard in dev.shards() {
            shard.pools.lock().stats_mut().reset_accumulated();
        }
        dev.seg_stats.lock().reset_accumulated();
        for c in [
            &dev.num_alloc_retries,
            &dev.num_ooms,
            &dev.num_sync_all_streams,
            &dev.num_device_alloc,
            &dev.num_device_free,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Every segment of `device` with its blocks, sorted by address.
    ///
    /// # Errors
    /// An unknown device.
    pub fn snapshot(&self, device: usize) -> Result<Vec<SegmentInfo>> {
        let dev = self.dev(device)?;
        let mut v = Vec::new();
        for shard in dev.shards() {
            v.extend(shard.pools.lock().segments());
        }
        v.sort_by_key(|s| s.addr);
        Ok(v)
    }

    /// Cache-wide figures of one device used by reports: (largest free block, free bytes in
    /// cached blocks, bytes waiting on events).
    ///
    /// # Errors
    /// An unknown device.
    pub fn cache_figures(&self, device: usize) -> Result<(u64, u64, u64)> {
        let dev = self.dev(device)?;
        let (mut largest, mut free, mut pending) = (0, 0, 0);
        for shard in dev.shards() {
            let g = shard.pools.lock();
            largest = largest.max(g.largest_free());
            free += g.free_bytes();
            pending += g.pending_bytes();
        }
        Ok((largest, free, pending))
    }

    /// Bytes reserved from the driver on `device`.
    pub fn reserved_bytes(&self, device: usize) -> u64 {
        self.devices
            .get(device)
            .map_or(0, |d| d.reserved.load(Ordering::Relaxed))
    }

    fn oom_report(&self, dev: &Device, req: &Request) -> OomError {
        let info = self.backend.mem_info(dev.index).unwrap_or_default();
        let stats = self.memory_stats(dev.index).unwrap_or_default();
        let (largest, _, _) = self.cache_figures(dev.index).unwrap_or_default();
        let reserved = dev.reserved.load(Ordering::Relaxed);
        let allocated = stats.blocks.allocated_bytes[0].current.max(0) as u64;
        let limit = dev.limit.load(Ordering::Relaxed);
        OomError {
            device: dev.index,
            requested: req.requested,
            rounded: req.rounded,
            segment_size: req.segment_size,
            device_total: info.total,
            device_free: info.free,
            allocated,
            reserved,
            reserved_free: reserved.saturating_sub(allocated),
            largest_free_block: largest,
            limit: (limit != u64::MAX).then_some(limit),
            max_split_size: self.config.max_split_size,
        }
    }

    /// Check every invariant (pools of every stream, segment accounting, no overlap between
    /// segments). Takes every lock in turn: for tests and debugging.
    ///
    /// # Errors
    /// A description of the first broken invariant.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        for dev in self.devices.iter() {
            let mut segs = Vec::new();
            let mut seg_count = 0usize;
            for shard in dev.shards() {
                let g = shard.pools.lock();
                g.check_invariants(&self.config)
                    .map_err(|e| format!("device {} stream {}: {e}", dev.index, shard.stream))?;
                segs.extend(g.segments());
                seg_count += g.segment_count();
                if dev.granularity > 0 {
                    for s in g.segments().iter().filter(|s| s.expandable) {
                        if s.addr % dev.granularity != 0 || s.size % dev.granularity != 0 {
                            return Err(format!(
                                "device {}: mapped run {:#x}+{} is not page-aligned",
                                dev.index, s.addr, s.size
                            ));
                        }
                    }
                }
            }
            segs.sort_by_key(|s| s.addr);
            for w in segs.windows(2) {
                if w[0].addr + w[0].size > w[1].addr {
                    return Err(format!(
                        "device {}: segments at {:#x} and {:#x} overlap",
                        dev.index, w[0].addr, w[1].addr
                    ));
                }
            }
            let total: u64 = segs.iter().map(|s| s.size).sum();
            let reserved = dev.reserved.load(Ordering::Relaxed);
            if total != reserved {
                return Err(format!(
                    "device {}: segments total {total}, reserved counter {reserved}",
                    dev.index
                ));
            }
            let st = dev.seg_stats.lock();
            if st.reserved_bytes[0].current as u64 != total
                || st.segment[0].current as usize != seg_count
            {
                return Err(format!(
                    "device {}: segment stats {:?}/{:?} vs recount {}/{}",
                    dev.index, st.segment[0], st.reserved_bytes[0], seg_count, total
                ));
            }
            let mut raws = 0usize;
            for shard in dev.raw.iter() {
                for (&ptr, e) in shard.lock().iter() {
                    raws += 1;
                    let g = dev.shard_at(e.slot).pools.lock();
                    if g.block_state(e.block) != Some(BlockState::Allocated)
                        || g.block_addr(e.block) != ptr
                    {
                        return Err(format!("raw pointer {ptr:#x} maps to a dead block"));
                    }
                }
            }
            let _ = raws;
        }
        Ok(())
    }
}

impl<B: Backend> Drop for CachingAllocator<B> {
    fn drop(&mut self) {
        // Every segment goes back to the driver; nothing can refer to them any more (RAII
        // allocations borrow the allocator; raw ones are the caller's to stop using).
        for dev in self.devices.iter() {
            let mut all = Vec::new();
            for shard in dev.shards() {
                let g = shard.pools.lock();
                for s in g.segments() {
                    if s.expandable {
                        let _ = self.backend.unmap_pages(dev.index, s.addr, s.size);
                    } else {
                        all.push(ReleasedSegment {
                            addr: s.addr,
                            size: s.size,
                            pool: s.pool,
                            stream: s.stream,
                        });
                    }
                }
                for pool in [PoolKind::Small, PoolKind::Large] {
                    if let Some((addr, size)) = g.expandable_segment(pool) {
                        let _ = self.backend.free_range(dev.index, addr, size);
                    }
                }
            }
            let _ = self.free_segments(dev, &all);
        }
    }
}
