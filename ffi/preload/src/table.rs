//! The one table of every symbol the shim handles, and nothing else.
//!
//! Responsible for: naming each symbol once, with its enum variant and its kind. From this
//! table come the `Sym` enum and its names (`real.rs`), which hook `dlsym` and
//! `cuGetProcAddress` hand out (`resolve.rs`), and the linker version script that exports
//! exactly the hooks (`build.rs`, which includes this file as a module of the build
//! script). Must not hold code: a row added here is a hook everywhere at once, and a kind
//! that is not one of the five below does not compile.
//!
//! Kinds:
//! - `dl`: `dlsym` itself; exported; the real one is glibc's, found with `dlvsym`;
//! - `resolver`: `cuGetProcAddress`/`_v2` (hooks in `resolve.rs`);
//! - `driver`: a libcuda entry point hooked in `driver.rs`;
//! - `runtime`: a libcudart entry point hooked in `runtime.rs`;
//! - `called`: a driver entry point the shim only calls (not exported, never substituted).
//!
//! `resolver` and `driver` hooks are handed out by `dlsym` (by name) and substituted in
//! `cuGetProcAddress`'s answers (by the real address); `runtime` hooks by `dlsym` only.
//! `driver`, `resolver` and `called` real functions are looked up with `RTLD_NEXT`, then in
//! a `libcuda.so.1` the process already loaded privately; `runtime` ones with `RTLD_NEXT`.

/// Calls `$then! { Variant c_name kind, ... }` with every row.
macro_rules! symbol_table {
    ($then:ident) => {
        $then! {
            Dlsym dlsym dl,
            MemAlloc cuMemAlloc_v2 driver,
            MemFree cuMemFree_v2 driver,
            MemAllocAsync cuMemAllocAsync driver,
            MemAllocAsyncPtsz cuMemAllocAsync_ptsz driver,
            MemFreeAsync cuMemFreeAsync driver,
            MemFreeAsyncPtsz cuMemFreeAsync_ptsz driver,
            MemGetInfo cuMemGetInfo_v2 driver,
            GetProcAddress cuGetProcAddress resolver,
            GetProcAddressV2 cuGetProcAddress_v2 resolver,
            CtxGetDevice cuCtxGetDevice called,
            StreamIsCapturing cuStreamIsCapturing called,
            CudaMalloc cudaMalloc runtime,
            CudaFree cudaFree runtime,
            CudaMallocAsync cudaMallocAsync runtime,
            CudaFreeAsync cudaFreeAsync runtime,
        }
    };
}
