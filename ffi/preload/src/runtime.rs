//! The runtime hooks, for programs linked to a shared `libcudart`: `cudaMalloc`, `cudaFree`,
//! `cudaMallocAsync` and `cudaFreeAsync`, answering in the runtime's statuses.
//!
//! Responsible for: the runtime's side of each call (its primary context made current when
//! none is, its status codes) and choosing between the cache and the real runtime. Must not:
//! decide about blocks or ownership (the cache does), or let a panic out.

use std::ffi::{c_int, c_void};

use crate::cache::pool_stream;
use crate::guard::{Inside, boundary};
use crate::lifecycle::{cache, exiting};
use crate::real::{
    CudaFreeAsyncFn, CudaFreeFn, CudaMallocAsyncFn, CudaMallocFn, Sym, capturing, current_device,
};
use crate::{
    CUDA_ERROR_DEINITIALIZED, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_FOUND,
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, CuStream,
};

const CUDART_SUCCESS: c_int = 0;
const CUDART_ERROR_INVALID_VALUE: c_int = 1;
const CUDART_ERROR_MEMORY_ALLOCATION: c_int = 2;
const CUDART_ERROR_CUDART_UNLOADING: c_int = 4;
const CUDART_ERROR_UNKNOWN: c_int = 999;

fn runtime_device() -> Option<usize> {
    if let Some(d) = current_device() {
        return Some(d);
    }
    // No current context yet: let the runtime create its primary context (cudaFree(NULL)
    // is the documented way), then ask again.
    call_real!(
        Sym::CudaFree,
        CudaFreeFn,
        CUDA_ERROR_NOT_FOUND,
        (std::ptr::null_mut())
    );
    current_device()
}

/// `stream`: `None` for `cudaMalloc`.
fn runtime_alloc(dev_ptr: *mut *mut c_void, size: usize, stream: Option<CuStream>) -> c_int {
    let pass = || -> c_int {
        match stream {
            None => call_real!(
                Sym::CudaMalloc,
                CudaMallocFn,
                CUDART_ERROR_UNKNOWN,
                (dev_ptr, size)
            ),
            Some(s) => call_real!(
                Sym::CudaMallocAsync,
                CudaMallocAsyncFn,
                CUDART_ERROR_UNKNOWN,
                (dev_ptr, size, s)
            ),
        }
    };
    if dev_ptr.is_null() || size == 0 {
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
    let Some(dev) = runtime_device() else {
        return pass();
    };
    match c.malloc(dev, size as u64, stream.and_then(pool_stream).unwrap_or(0)) {
        Ok(p) => {
            // SAFETY: checked non-null; the caller provides a writable pointer slot.
            unsafe { *dev_ptr = p as *mut c_void };
            CUDART_SUCCESS
        }
        Err(CUDA_ERROR_OUT_OF_MEMORY) => CUDART_ERROR_MEMORY_ALLOCATION,
        Err(_) => CUDART_ERROR_UNKNOWN,
    }
}

/// `stream`: `None` for `cudaFree`.
fn runtime_free(ptr: *mut c_void, stream: Option<CuStream>) -> c_int {
    let pass = || -> c_int {
        match stream {
            None => call_real!(Sym::CudaFree, CudaFreeFn, CUDART_ERROR_UNKNOWN, (ptr)),
            Some(s) => call_real!(
                Sym::CudaFreeAsync,
                CudaFreeAsyncFn,
                CUDART_ERROR_UNKNOWN,
                (ptr, s)
            ),
        }
    };
    if ptr.is_null() {
        return pass();
    }
    if exiting() {
        return CUDART_SUCCESS;
    }
    let Some(_g) = Inside::enter() else {
        return pass();
    };
    let Some(c) = cache() else {
        return pass();
    };
    match c.free(ptr as u64, stream) {
        None => pass(),
        Some(CUDA_SUCCESS) => CUDART_SUCCESS,
        Some(CUDA_ERROR_INVALID_VALUE) => CUDART_ERROR_INVALID_VALUE,
        Some(CUDA_ERROR_DEINITIALIZED) => CUDART_ERROR_CUDART_UNLOADING,
        Some(_) => CUDART_ERROR_UNKNOWN,
    }
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaMalloc(dev_ptr: *mut *mut c_void, size: usize) -> c_int {
    boundary("cudaMalloc", CUDART_ERROR_UNKNOWN, || {
        runtime_alloc(dev_ptr, size, None)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaFree(ptr: *mut c_void) -> c_int {
    boundary("cudaFree", CUDART_ERROR_UNKNOWN, || runtime_free(ptr, None))
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaMallocAsync(
    dev_ptr: *mut *mut c_void,
    size: usize,
    stream: CuStream,
) -> c_int {
    boundary("cudaMallocAsync", CUDART_ERROR_UNKNOWN, || {
        runtime_alloc(dev_ptr, size, Some(stream))
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaFreeAsync(ptr: *mut c_void, stream: CuStream) -> c_int {
    boundary("cudaFreeAsync", CUDART_ERROR_UNKNOWN, || {
        runtime_free(ptr, Some(stream))
    })
}
