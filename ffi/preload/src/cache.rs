//! The cache behind the hooks: cudalloc's allocator over the CUDA driver (its segments
//! recorded by `segments.rs`), the deferred frees of `cuMemFree`/`cudaFree`, and the figures
//! `cuMemGetInfo_v2` reports.
//!
//! Responsible for: serving allocations (from the cache, after one device synchronization
//! makes deferred frees reusable, or from new segments); deciding for every free whether the
//! pointer is a live allocation of the cache (freed), inside memory the cache owns but not
//! live (refused with `CUDA_ERROR_INVALID_VALUE`, nothing changed) or the driver's (`None`:
//! the caller passes it on). Must not: touch C pointers, read the environment beyond
//! cudalloc's configuration, or know which entry point it serves (the hooks translate).
//!
//! Locking: a pointer of a device is only ever removed from the allocator's live set with
//! its deferral shard locked (deferred free, stream-ordered free, flush), so two frees of one
//! pointer racing each other cannot both succeed, and a flush never frees a block that was
//! handed out again. The allocator never takes these locks, so there is no cycle.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use core::backend::{Backend, CudaBackend};
use core::{CachingAllocator, Config, Error};
use parking_lot::Mutex;

use crate::segments::Owned;
use crate::{
    CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_UNKNOWN, CUDA_SUCCESS, CuResult,
    CuStream,
};

/// Deferred frees beyond these are made reusable at once (one device synchronization).
const DEFER_MAX_COUNT: usize = 4096;
const DEFER_MAX_BYTES: u64 = 1 << 30;
/// Deferral shards per device (a power of two): frees of different pointers rarely contend.
const DEFER_SHARDS: usize = 16;

/// Hashes device addresses (distinct, 512-byte aligned) with one multiply: SipHash's
/// resistance to chosen keys buys nothing here, and on the stand-in it made an alloc/free
/// pair some 10-20% slower than this.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n >> 9).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Pointer → requested size.
type AddrMap = HashMap<u64, u64, BuildHasherDefault<AddrHasher>>;

#[derive(Default)]
struct DeferShard {
    /// Freed with `cuMemFree`/`cudaFree` (or on a default stream), still live in the
    /// allocator, waiting for the next device synchronization.
    waiting: AddrMap,
    /// Taken by a flush that is synchronizing the device; freed to the allocator after it.
    flushing: AddrMap,
}

impl DeferShard {
    fn holds(&self, ptr: u64) -> bool {
        self.waiting.contains_key(&ptr) || self.flushing.contains_key(&ptr)
    }
}

struct Deferred {
    shards: Box<[Mutex<DeferShard>]>,
    count: AtomicUsize,
    bytes: AtomicU64,
}

impl Deferred {
    fn new() -> Deferred {
        Deferred {
            shards: (0..DEFER_SHARDS)
                .map(|_| Mutex::new(DeferShard::default()))
                .collect(),
            count: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn shard(&self, ptr: u64) -> &Mutex<DeferShard> {
        let h = (ptr >> 9).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
        &self.shards[h as usize % DEFER_SHARDS]
    }
}

/// What freeing a pointer as a live allocation came to.
enum Freed {
    Done(CuResult),
    /// Not a live allocation of the cache (the caller decides whose it is).
    NotLive,
}

pub(crate) struct Cache {
    alloc: CachingAllocator<Owned<CudaBackend>>,
    deferred: Box<[Deferred]>,
}

/// Default streams (NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD) share one pool, with
/// deferred frees; other streams have their own, with stream-ordered frees.
pub(crate) fn pool_stream(stream: CuStream) -> Option<u64> {
    match stream as usize {
        0..=2 => None,
        s => Some(s as u64),
    }
}

fn cu_error(e: &Error) -> CuResult {
    match e {
        Error::OutOfMemory(_) => CUDA_ERROR_OUT_OF_MEMORY,
        Error::InvalidArgument(_) | Error::UnknownPointer(_) => CUDA_ERROR_INVALID_VALUE,
        Error::Backend(core::BackendError::Driver { code, .. }) if *code > 0 => *code,
        _ => CUDA_ERROR_UNKNOWN,
    }
}

impl Cache {
    /// The cache over the CUDA driver, configured by `CUDALLOC_CONF`.
    ///
    /// # Errors
    /// A bad configuration, no driver, or a configuration the driver cannot serve.
    pub(crate) fn new() -> Result<Cache, String> {
        let (config, notes) = Config::from_env().map_err(|e| e.to_string())?;
        for n in notes {
            crate::guard::say(format_args!("{n}"));
        }
        let backend = Owned::new(CudaBackend::new().map_err(|e| e.to_string())?);
        let alloc = CachingAllocator::new(backend, config).map_err(|e| e.to_string())?;
        let deferred = (0..alloc.device_count()).map(|_| Deferred::new()).collect();
        Ok(Cache { alloc, deferred })
    }

    /// The memory summary of every device.
    pub(crate) fn summaries(&self) -> Vec<String> {
        (0..self.alloc.device_count())
            .filter_map(|d| self.alloc.memory_summary(d).ok())
            .collect()
    }

    /// `size` bytes on `dev` for `stream` (0: the default streams' pool).
    pub(crate) fn malloc(&self, dev: usize, size: u64, stream: u64) -> Result<u64, CuResult> {
        if let Some(p) = self
            .alloc
            .allocate_raw_cached(dev, size, stream)
            .map_err(|e| cu_error(&e))?
        {
            return Ok(p);
        }
        if self.flush(dev) > 0
            && let Some(p) = self
                .alloc
                .allocate_raw_cached(dev, size, stream)
                .map_err(|e| cu_error(&e))?
        {
            return Ok(p);
        }
        self.alloc
            .allocate_raw(dev, size, stream)
            .map_err(|e| cu_error(&e))
    }

    /// Free `ptr`, on `stream` (`None`: `cuMemFree`/`cudaFree`). `None`: the pointer is
    /// outside every segment of the cache, so it is the driver's.
    pub(crate) fn free(&self, ptr: u64, stream: Option<CuStream>) -> Option<CuResult> {
        let freed = match self.alloc.device_of_raw(ptr) {
            Some(dev) => match stream.and_then(pool_stream) {
                None => self.free_deferred(dev, ptr),
                Some(s) => self.free_async(dev, ptr, s),
            },
            None => Freed::NotLive,
        };
        match freed {
            Freed::Done(r) => Some(r),
            // Freed already, inside a block, or a block never handed out: the driver would
            // take the whole segment if it were the base, and refuses anything else.
            Freed::NotLive if self.alloc.backend().owns(ptr) => Some(CUDA_ERROR_INVALID_VALUE),
            Freed::NotLive => None,
        }
    }

    fn free_deferred(&self, dev: usize, ptr: u64) -> Freed {
        let d = &self.deferred[dev];
        let flush = {
            let mut sh = d.shard(ptr).lock();
            if sh.holds(ptr) {
                return Freed::Done(CUDA_ERROR_INVALID_VALUE); // freed twice
            }
            // Asked with the shard locked: nothing can free it between this and the insert.
            let Some(size) = self.alloc.raw_size(dev, ptr) else {
                return Freed::NotLive;
            };
            sh.waiting.insert(ptr, size);
            let n = d.count.fetch_add(1, Ordering::AcqRel) + 1;
            let b = d.bytes.fetch_add(size, Ordering::AcqRel) + size;
            n >= DEFER_MAX_COUNT || b >= DEFER_MAX_BYTES
        };
        if flush {
            self.flush(dev);
        }
        Freed::Done(CUDA_SUCCESS)
    }

    fn free_async(&self, dev: usize, ptr: u64, stream: u64) -> Freed {
        let sh = self.deferred[dev].shard(ptr).lock();
        if sh.holds(ptr) {
            return Freed::Done(CUDA_ERROR_INVALID_VALUE); // freed already, deferred
        }
        let Some(owner) = self.alloc.raw_stream(dev, ptr) else {
            return Freed::NotLive;
        };
        if owner != stream
            && let Err(e) = self.alloc.record_stream_raw(dev, ptr, stream)
        {
            return Freed::Done(cu_error(&e));
        }
        match self.alloc.free_raw_on(dev, ptr, Some(owner)) {
            Ok(()) => Freed::Done(CUDA_SUCCESS),
            Err(Error::UnknownPointer(_)) => Freed::NotLive,
            Err(e) => Freed::Done(cu_error(&e)),
        }
    }

    /// Make every deferred free of `dev` reusable: one device synchronization. Returns how
    /// many became reusable.
    fn flush(&self, dev: usize) -> usize {
        let d = &self.deferred[dev];
        let mut batch: Vec<Vec<(u64, u64)>> = Vec::with_capacity(DEFER_SHARDS);
        let (mut count, mut bytes) = (0usize, 0u64);
        for s in d.shards.iter() {
            let mut sh = s.lock();
            let taken: Vec<(u64, u64)> = sh.waiting.drain().collect();
            sh.flushing.extend(taken.iter().copied());
            count += taken.len();
            bytes += taken.iter().map(|&(_, n)| n).sum::<u64>();
            batch.push(taken);
        }
        if count == 0 {
            return 0;
        }
        d.count.fetch_sub(count, Ordering::AcqRel);
        d.bytes.fetch_sub(bytes, Ordering::AcqRel);
        let synced = self.alloc.backend().synchronize_device(dev).is_ok();
        for (s, taken) in d.shards.iter().zip(batch) {
            let mut sh = s.lock();
            for (p, n) in taken {
                sh.flushing.remove(&p);
                if synced {
                    let _ = self.alloc.free_raw(dev, p);
                } else {
                    // Cannot prove the work is done: keep it deferred.
                    sh.waiting.insert(p, n);
                }
            }
        }
        if synced {
            count
        } else {
            d.count.fetch_add(count, Ordering::AcqRel);
            d.bytes.fetch_add(bytes, Ordering::AcqRel);
            0
        }
    }

    /// `read` (the driver's `cuMemGetInfo`), run while no segment of `dev` comes or goes, and
    /// the bytes the cache holds on `dev` at that moment.
    pub(crate) fn driver_figures<R>(&self, dev: usize, read: impl FnOnce() -> R) -> (R, u64) {
        self.alloc.backend().resident_during(dev, read)
    }

    /// Free memory to report on `dev`: the driver's free bytes plus what the cache holds
    /// free (reusable without the driver, deferred frees included), with `driver_free` and
    /// `resident` read together by [`Cache::driver_figures`].
    ///
    /// The cache's part is at most `resident`, and the driver's free memory plus `resident`
    /// is at most `total` at the moment they were read, so the sum never exceeds `total`
    /// (clamped too, against a driver that counts otherwise).
    pub(crate) fn free_to_report(
        &self,
        dev: usize,
        driver_free: u64,
        total: u64,
        resident: u64,
    ) -> u64 {
        let held = match self.alloc.memory_stats(dev) {
            Ok(st) => {
                let allocated = st.blocks.allocated_bytes[0].current.max(0) as u64;
                let deferred = self.deferred[dev].bytes.load(Ordering::Acquire);
                resident
                    .saturating_sub(allocated)
                    .saturating_add(deferred)
                    .min(resident)
            }
            Err(_) => 0,
        };
        driver_free.saturating_add(held).min(total)
    }
}
