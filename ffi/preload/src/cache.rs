//! The cache behind the hooks: cudalloc's allocator over the CUDA driver, the deferred
//! frees of `cuMemFree`/`cudaFree`, and the free memory `cuMemGetInfo_v2` adds.
//!
//! Responsible for: serving allocations (from the cache, after one device synchronization
//! makes deferred frees reusable, or from new segments) and freeing what the cache handed
//! out (`None` for anything else: the caller passes it on). Must not: touch C pointers, read
//! the environment beyond cudalloc's configuration, or know which entry point it serves (the
//! hooks translate).

use core::backend::{Backend, CudaBackend};
use core::{CachingAllocator, Config, Error};
use parking_lot::Mutex;

use crate::{
    CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_UNKNOWN, CUDA_SUCCESS, CuResult,
    CuStream,
};

/// Deferred frees beyond these are made reusable at once (one device synchronization).
const DEFER_MAX_COUNT: usize = 4096;
const DEFER_MAX_BYTES: u64 = 1 << 30;

struct Deferred {
    ptrs: Vec<u64>,
    bytes: u64,
}

pub(crate) struct Cache {
    alloc: CachingAllocator<CudaBackend>,
    deferred: Vec<Mutex<Deferred>>,
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
        Error::InvalidArgument(_) => CUDA_ERROR_INVALID_VALUE,
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
        let backend = CudaBackend::new().map_err(|e| e.to_string())?;
        let alloc = CachingAllocator::new(backend, config).map_err(|e| e.to_string())?;
        let deferred = (0..alloc.device_count())
            .map(|_| {
                Mutex::new(Deferred {
                    ptrs: Vec::new(),
                    bytes: 0,
                })
            })
            .collect();
        Ok(Cache { alloc, deferred })
    }

    /// The memory summary of every device.
    pub(crate) fn summaries(&self) -> Vec<String> {
        (0..self.alloc.device_count())
            .filter_map(|d| self.alloc.memory_summary(d).ok())
            .collect()
    }

    /// Make every deferred free of `dev` reusable: one device synchronization.
    fn flush(&self, dev: usize) -> usize {
        let ptrs = {
            let mut d = self.deferred[dev].lock();
            d.bytes = 0;
            std::mem::take(&mut d.ptrs)
        };
        if ptrs.is_empty() {
            return 0;
        }
        if self.alloc.backend().synchronize_device(dev).is_err() {
            // Cannot prove the work is done: keep them deferred.
            let mut d = self.deferred[dev].lock();
            d.ptrs.extend(ptrs);
            return 0;
        }
        let n = ptrs.len();
        for p in ptrs {
            let _ = self.alloc.free_raw(dev, p);
        }
        n
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

    /// Free `ptr`, on `stream` (`None`: `cuMemFree`/`cudaFree`). `None`: not the cache's.
    pub(crate) fn free(&self, ptr: u64, stream: Option<CuStream>) -> Option<CuResult> {
        match stream.and_then(pool_stream) {
            None => self.free_deferred(ptr),
            Some(s) => self.free_async(ptr, s),
        }
    }

    fn free_deferred(&self, ptr: u64) -> Option<CuResult> {
        let dev = self.alloc.device_of_raw(ptr)?;
        let size = self.alloc.raw_size(dev, ptr).unwrap_or(0);
        let flush = {
            let mut d = self.deferred[dev].lock();
            if d.ptrs.contains(&ptr) {
                return Some(CUDA_ERROR_INVALID_VALUE); // freed twice
            }
            d.ptrs.push(ptr);
            d.bytes += size;
            d.ptrs.len() >= DEFER_MAX_COUNT || d.bytes >= DEFER_MAX_BYTES
        };
        if flush {
            self.flush(dev);
        }
        Some(CUDA_SUCCESS)
    }

    fn free_async(&self, ptr: u64, s: u64) -> Option<CuResult> {
        let dev = self.alloc.device_of_raw(ptr)?;
        if self.alloc.raw_stream(dev, ptr) != Some(s)
            && let Err(e) = self.alloc.record_stream_raw(dev, ptr, s)
        {
            return Some(cu_error(&e));
        }
        Some(match self.alloc.free_raw(dev, ptr) {
            Ok(()) => CUDA_SUCCESS,
            Err(e) => cu_error(&e),
        })
    }

    /// Free bytes the cache holds on `dev` (reusable without the driver).
    pub(crate) fn cached_free(&self, dev: usize) -> u64 {
        let Ok(st) = self.alloc.memory_stats(dev) else {
            return 0;
        };
        let reserved = st.segments.reserved_bytes[0].current.max(0) as u64;
        let allocated = st.blocks.allocated_bytes[0].current.max(0) as u64;
        reserved.saturating_sub(allocated) + self.deferred[dev].lock().bytes
    }
}
