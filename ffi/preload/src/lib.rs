//! `libcudalloc_preload.so`: with `LD_PRELOAD`, an unmodified CUDA program's device
//! allocations go through cudalloc's cache.
//!
//! CUDA's runtime (11.3 and later, static or shared, so nvcc's default builds and PyTorch)
//! reaches the driver through `cuGetProcAddress`, which it finds with `dlsym` on its own
//! handle of `libcuda.so.1` — a lookup that preloading alone does not intercept. So the shim
//! interposes `dlsym` (only to hand out its own `cuGetProcAddress`, and its hooks when asked
//! for them by name), wraps `cuGetProcAddress`/`_v2` (the real resolver runs first; on success
//! the returned pointer is compared with the real entry points the shim handles, so `_v2` and
//! `_ptsz` variants map to the matching hook), and exports the plain driver symbols
//! (`cuMemAlloc_v2`, `cuMemFree_v2`, `cuMemAllocAsync`(`_ptsz`), `cuMemFreeAsync`(`_ptsz`),
//! `cuMemGetInfo_v2`) and the runtime's `cudaMalloc`/`cudaFree`/`cudaMallocAsync`/
//! `cudaFreeAsync`. Every one of them is a row of one table (`table.rs`).
//!
//! Semantics kept: `cuMemFree`/`cudaFree` imply the block's work is done before reuse, so a
//! freed block is *deferred*: it becomes reusable only after one device synchronization,
//! made when the cache cannot serve a request otherwise (or too much is deferred). Async
//! variants follow stream order. The shim owns its segments: a free of any address inside
//! them that is not a live allocation (a second free, a pointer inside a block, a block it
//! never handed out) gets the driver's own answer, `CUDA_ERROR_INVALID_VALUE`, and changes
//! nothing; only pointers outside every segment of the cache go to the real driver, as do
//! allocations on a capturing stream. `cuMemGetInfo_v2` adds what the cache holds free to the
//! driver's figure, both read at one moment, so free never exceeds total.
//!
//! Robustness: lazy start on first use (no constructor calls the driver); a start that fails
//! or panics disables the cache (calls pass to the real driver, one line on stderr); a forked
//! child starts with a clean cache; once the process exits no driver call is made;
//! thread-safe; the shim's own driver calls never re-enter its hooks; every exported entry
//! point and both process handlers run inside one panic boundary (`guard.rs`).
//! `CUDALLOC_CONF` applies; `CUDALLOC_SUMMARY_AT_EXIT=1` prints the memory summary to stderr
//! at exit.
//!
//! Files, by concern: `table.rs` (the symbols), `real.rs` (finding and calling the real
//! functions), `guard.rs` (re-entrancy guard, panic boundary), `lifecycle.rs` (start, exit,
//! fork), `segments.rs` (which addresses the cache owns), `cache.rs` (the allocator and
//! deferred frees), `driver.rs`, `runtime.rs` and `resolve.rs` (the hooks).

use std::ffi::{c_int, c_void};

#[macro_use]
mod table;
#[macro_use]
mod real;
mod cache;
mod driver;
mod guard;
mod lifecycle;
mod resolve;
mod runtime;
mod segments;

/// The driver's status (`CUresult`).
type CuResult = c_int;
/// A device address (`CUdeviceptr`).
type CuDevicePtr = u64;
/// A stream (`CUstream`).
type CuStream = *mut c_void;

const CUDA_SUCCESS: CuResult = 0;
const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
const CUDA_ERROR_DEINITIALIZED: CuResult = 4;
const CUDA_ERROR_NOT_FOUND: CuResult = 500;
const CUDA_ERROR_UNKNOWN: CuResult = 999;
