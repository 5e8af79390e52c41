//! The driver hooks: `cuMemAlloc_v2`, `cuMemFree_v2`, `cuMemAllocAsync`(`_ptsz`),
//! `cuMemFreeAsync`(`_ptsz`) and `cuMemGetInfo_v2`, exported under the driver's names and
//! handed out in place of the driver's by `resolve.rs`.
//!
//! Responsible for: the C side of each call (null and zero-size arguments, the per-thread
//! default stream, capturing streams, writing results through the caller's pointers) and for
//! choosing between the cache and the real driver. Must not: decide about blocks or
//! ownership (the cache does), or let a panic out (every body runs in the boundary).

use crate::cache::pool_stream;
use crate::guard::{Inside, boundary};
use crate::lifecycle::{cache, exiting};
use crate::real::{
    AllocAsyncFn, AllocFn, FreeAsyncFn, FreeFn, MemInfoFn, Sym, capturing, current_device,
};
use crate::{
    CUDA_ERROR_NOT_FOUND, CUDA_ERROR_UNKNOWN, CUDA_SUCCESS, CuDevicePtr, CuResult, CuStream,
};

/// On the per-thread default stream variants, NULL means that thread's stream.
fn per_thread(stream: CuStream) -> CuStream {
    if stream.is_null() {
        2usize as CuStream
    } else {
        stream
    }
}

/// `stream`: `None` for `cuMemAlloc_v2`.
fn alloc_hook(
    dptr: *mut CuDevicePtr,
    size: usize,
    stream: Option<CuStream>,
    real: Sym,
) -> CuResult {
    let pass = || -> CuResult {
        match stream {
            None => call_real!(real, AllocFn, CUDA_ERROR_NOT_FOUND, (dptr, size)),
            Some(s) => call_real!(real, AllocAsyncFn, CUDA_ERROR_NOT_FOUND, (dptr, size, s)),
        }
    };
    if dptr.is_null() || size == 0 {
        return pass();
    }
    let Some(_g) = Inside::enter() else {
        return pass();
    };
    let Some(c) = cache() else {
        return pass();
    };
    if stream.is_some_and(capturing) {
        return pass();
    }
    let Some(dev) = current_device() else {
        return pass();
    };
    match c.malloc(dev, size as u64, stream.and_then(pool_stream).unwrap_or(0)) {
        Ok(p) => {
            // SAFETY: checked non-null above; the caller provides a writable CUdeviceptr.
            unsafe { *dptr = p };
            CUDA_SUCCESS
        }
        Err(e) => e,
    }
}

/// `stream`: `None` for `cuMemFree_v2`.
fn free_hook(ptr: CuDevicePtr, stream: Option<CuStream>, real: Sym) -> CuResult {
    let pass = || -> CuResult {
        match stream {
            None => call_real!(real, FreeFn, CUDA_ERROR_NOT_FOUND, (ptr)),
            Some(s) => call_real!(real, FreeAsyncFn, CUDA_ERROR_NOT_FOUND, (ptr, s)),
        }
    };
    if ptr == 0 {
        return pass();
    }
    if exiting() {
        // No driver calls once exit has begun; the process's memory goes with it.
        return CUDA_SUCCESS;
    }
    let Some(_g) = Inside::enter() else {
        return pass();
    };
    let Some(c) = cache() else {
        return pass();
    };
    c.free(ptr, stream).unwrap_or_else(pass)
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CuDevicePtr, size: usize) -> CuResult {
    boundary("cuMemAlloc_v2", CUDA_ERROR_UNKNOWN, || {
        alloc_hook(dptr, size, None, Sym::MemAlloc)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(ptr: CuDevicePtr) -> CuResult {
    boundary("cuMemFree_v2", CUDA_ERROR_UNKNOWN, || {
        free_hook(ptr, None, Sym::MemFree)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CuDevicePtr,
    size: usize,
    stream: CuStream,
) -> CuResult {
    boundary("cuMemAllocAsync", CUDA_ERROR_UNKNOWN, || {
        alloc_hook(dptr, size, Some(stream), Sym::MemAllocAsync)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CuDevicePtr,
    size: usize,
    stream: CuStream,
) -> CuResult {
    boundary("cuMemAllocAsync_ptsz", CUDA_ERROR_UNKNOWN, || {
        alloc_hook(dptr, size, Some(per_thread(stream)), Sym::MemAllocAsyncPtsz)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(ptr: CuDevicePtr, stream: CuStream) -> CuResult {
    boundary("cuMemFreeAsync", CUDA_ERROR_UNKNOWN, || {
        free_hook(ptr, Some(stream), Sym::MemFreeAsync)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(ptr: CuDevicePtr, stream: CuStream) -> CuResult {
    boundary("cuMemFreeAsync_ptsz", CUDA_ERROR_UNKNOWN, || {
        free_hook(ptr, Some(per_thread(stream)), Sym::MemFreeAsyncPtsz)
    })
}

/// Free memory as the driver reports it plus what the cache holds free, never more than
/// total.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    boundary("cuMemGetInfo_v2", CUDA_ERROR_UNKNOWN, || {
        let real = || {
            call_real!(
                Sym::MemGetInfo,
                MemInfoFn,
                CUDA_ERROR_NOT_FOUND,
                (free, total)
            )
        };
        if free.is_null() || total.is_null() {
            return real();
        }
        let Some(_g) = Inside::enter() else {
            return real();
        };
        let Some(c) = cache() else {
            return real();
        };
        let Some(dev) = current_device() else {
            return real();
        };
        let (r, resident) = c.driver_figures(dev, real);
        if r == CUDA_SUCCESS {
            // SAFETY: the real call succeeded, so both pointers are valid and were written.
            unsafe {
                *free = c.free_to_report(dev, *free as u64, *total as u64, resident) as usize
            };
        }
        r
    })
}
