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
//! `cudaFreeAsync`.
//!
//! Semantics kept: `cuMemFree`/`cudaFree` imply the block's work is done before reuse, so a
//! freed block is *deferred*: it becomes reusable only after one device synchronization,
//! made when the cache cannot serve a request otherwise (or too much is deferred). Async
//! variants follow stream order. Pointers the cache did not hand out go to the real driver;
//! allocations on a capturing stream go to the real driver. Robustness: lazy start on first
//! use (no constructor calls the driver); a forked child starts with a clean cache; once the
//! process exits no driver call is made; thread-safe; the shim's own driver calls never
//! re-enter its hooks. `CUDALLOC_CONF` applies; `CUDALLOC_SUMMARY_AT_EXIT=1` prints the
//! memory summary to stderr at exit.

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

use core::backend::{Backend, CudaBackend};
use core::{CachingAllocator, Config, Error};
use parking_lot::Mutex;

type CuResult = c_int;
type CuDevicePtr = u64;
type CuStream = *mut c_void;

const CUDA_SUCCESS: CuResult = 0;
const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
const CUDA_ERROR_DEINITIALIZED: CuResult = 4;
const CUDA_ERROR_NOT_FOUND: CuResult = 500;
const CUDA_ERROR_UNKNOWN: CuResult = 999;
const CUDART_ERROR_MEMORY_ALLOCATION: c_int = 2;
const CUDART_ERROR_UNKNOWN: c_int = 999;

/// Deferred frees beyond these are made reusable at once (one device synchronization).
const DEFER_MAX_COUNT: usize = 4096;
const DEFER_MAX_BYTES: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------
// Re-entrancy guard: the shim's own work (allocator, driver backend, symbol loading) never
// goes through its hooks.

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

struct Inside;

impl Inside {
    /// `None` when this thread is already inside the shim.
    fn enter() -> Option<Inside> {
        IN_SHIM.with(|f| {
            if f.get() {
                None
            } else {
                f.set(true);
                Some(Inside)
            }
        })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        IN_SHIM.with(|f| f.set(false));
    }
}

fn inside() -> bool {
    IN_SHIM.with(Cell::get)
}

// ---------------------------------------------------------------------------------------
// The real functions.

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

unsafe extern "C" {
    fn dlvsym(handle: *mut c_void, symbol: *const c_char, version: *const c_char) -> *mut c_void;
}

static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

/// glibc's own `dlsym` (found with `dlvsym`, which the shim does not interpose).
fn real_dlsym() -> Option<DlsymFn> {
    let mut p = REAL_DLSYM.load(Ordering::Acquire);
    if p == 0 {
        for v in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
            // SAFETY: dlvsym with RTLD_NEXT and static strings has no precondition.
            let f = unsafe { dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), v.as_ptr()) };
            if !f.is_null() {
                p = f as usize;
                REAL_DLSYM.store(p, Ordering::Release);
                break;
            }
        }
    }
    // SAFETY: a non-zero value is glibc's dlsym, which has this signature.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, DlsymFn>(p) })
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum F {
    MemAlloc,
    MemFree,
    MemAllocAsync,
    MemAllocAsyncPtsz,
    MemFreeAsync,
    MemFreeAsyncPtsz,
    MemGetInfo,
    GetProcAddress,
    GetProcAddressV2,
    CtxGetDevice,
    StreamIsCapturing,
    CudaMalloc,
    CudaFree,
    CudaMallocAsync,
    CudaFreeAsync,
}

const N: usize = 15;
const NAMES: [&CStr; N] = [
    c"cuMemAlloc_v2",
    c"cuMemFree_v2",
    c"cuMemAllocAsync",
    c"cuMemAllocAsync_ptsz",
    c"cuMemFreeAsync",
    c"cuMemFreeAsync_ptsz",
    c"cuMemGetInfo_v2",
    c"cuGetProcAddress",
    c"cuGetProcAddress_v2",
    c"cuCtxGetDevice",
    c"cuStreamIsCapturing",
    c"cudaMalloc",
    c"cudaFree",
    c"cudaMallocAsync",
    c"cudaFreeAsync",
];
static REAL: [AtomicUsize; N] = [const { AtomicUsize::new(0) }; N];

/// The real function `f` (0 when it cannot be found).
fn real(f: F) -> usize {
    let i = f as usize;
    let p = REAL[i].load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    let Some(dlsym) = real_dlsym() else {
        return 0;
    };
    // SAFETY: real dlsym with RTLD_NEXT and a static NUL-terminated name.
    let mut found = unsafe { dlsym(libc::RTLD_NEXT, NAMES[i].as_ptr()) };
    if found.is_null() && i < F::CudaMalloc as usize {
        // libcuda may have been opened privately (RTLD_LOCAL) by the runtime: ask it.
        // SAFETY: RTLD_NOLOAD only returns a handle if the library is already loaded.
        let h =
            unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if !h.is_null() {
            // SAFETY: `h` is a live handle; the name is a static NUL-terminated string.
            found = unsafe { dlsym(h, NAMES[i].as_ptr()) };
            // SAFETY: balances the dlopen above (the library stays loaded).
            unsafe { libc::dlclose(h) };
        }
    }
    if !found.is_null() {
        REAL[i].store(found as usize, Ordering::Release);
    }
    found as usize
}

macro_rules! call_real {
    ($f:expr, $ty:ty, $missing:expr, ($($arg:expr),*)) => {{
        let p = real($f);
        if p == 0 {
            $missing
        } else {
            // SAFETY: `p` is the real function named by `$f`, whose C signature is `$ty`.
            unsafe { std::mem::transmute::<usize, $ty>(p)($($arg),*) }
        }
    }};
}

type AllocFn = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type FreeFn = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
type AllocAsyncFn = unsafe extern "C" fn(*mut CuDevicePtr, usize, CuStream) -> CuResult;
type FreeAsyncFn = unsafe extern "C" fn(CuDevicePtr, CuStream) -> CuResult;
type MemInfoFn = unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult;
type GpaFn = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CuResult;
type GpaV2Fn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CuResult;
type CtxGetDeviceFn = unsafe extern "C" fn(*mut c_int) -> CuResult;
type IsCapturingFn = unsafe extern "C" fn(CuStream, *mut c_int) -> CuResult;
type CudaMallocFn = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
type CudaFreeFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type CudaMallocAsyncFn = unsafe extern "C" fn(*mut *mut c_void, usize, CuStream) -> c_int;
type CudaFreeAsyncFn = unsafe extern "C" fn(*mut c_void, CuStream) -> c_int;

// ---------------------------------------------------------------------------------------
// The cache.

struct Deferred {
    ptrs: Vec<u64>,
    bytes: u64,
}

struct Shim {
    alloc: CachingAllocator<CudaBackend>,
    deferred: Vec<Mutex<Deferred>>,
}

const UNINIT: u8 = 0;
const STARTING: u8 = 1;
const READY: u8 = 2;
const DISABLED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static SHIM: AtomicPtr<Shim> = AtomicPtr::new(std::ptr::null_mut());
static EXITING: AtomicBool = AtomicBool::new(false);
static HANDLERS: AtomicBool = AtomicBool::new(false);

extern "C" fn at_exit() {
    if std::env::var_os("CUDALLOC_SUMMARY_AT_EXIT").is_some_and(|v| v == "1") {
        let p = SHIM.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a published Shim is leaked and never freed.
            let s = unsafe { &*p };
            for d in 0..s.alloc.device_count() {
                if let Ok(text) = s.alloc.memory_summary(d) {
                    eprintln!("{text}");
                }
            }
        }
    }
    EXITING.store(true, Ordering::Release);
}

extern "C" fn in_fork_child() {
    // The parent's cache (and its CUDA state) is not the child's: start afresh. The old
    // state is leaked on purpose: freeing it would call the driver for the parent's memory.
    SHIM.store(std::ptr::null_mut(), Ordering::Release);
    STATE.store(UNINIT, Ordering::Release);
}

/// The cache, started on first use; `None` when disabled or exiting (pass through).
fn shim() -> Option<&'static Shim> {
    if EXITING.load(Ordering::Acquire) {
        return None;
    }
    loop {
        match STATE.load(Ordering::Acquire) {
            READY => {
                // SAFETY: READY is published after SHIM; a published Shim is never freed.
                return unsafe { SHIM.load(Ordering::Acquire).as_ref() };
            }
            DISABLED => return None,
            STARTING => std::thread::yield_now(),
            _ => {
                if STATE
                    .compare_exchange(UNINIT, STARTING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                match start() {
                    Ok(s) => {
                        SHIM.store(Box::into_raw(Box::new(s)), Ordering::Release);
                        STATE.store(READY, Ordering::Release);
                    }
                    Err(e) => {
                        eprintln!("cudalloc preload: disabled, passing calls to the driver: {e}");
                        STATE.store(DISABLED, Ordering::Release);
                    }
                }
            }
        }
    }
}

fn start() -> Result<Shim, String> {
    if !HANDLERS.swap(true, Ordering::AcqRel) {
        // SAFETY: registering plain extern "C" functions that never unwind.
        unsafe {
            libc::atexit(at_exit);
            libc::pthread_atfork(None, None, Some(in_fork_child));
        }
    }
    let (config, notes) = Config::from_env().map_err(|e| e.to_string())?;
    for n in notes {
        eprintln!("{n}");
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
    Ok(Shim { alloc, deferred })
}

fn current_device() -> Option<usize> {
    let mut d: c_int = -1;
    let r = call_real!(
        F::CtxGetDevice,
        CtxGetDeviceFn,
        CUDA_ERROR_NOT_FOUND,
        (&mut d)
    );
    (r == CUDA_SUCCESS && d >= 0).then_some(d as usize)
}

fn capturing(stream: CuStream) -> bool {
    let mut status: c_int = 0;
    let r = call_real!(
        F::StreamIsCapturing,
        IsCapturingFn,
        CUDA_ERROR_NOT_FOUND,
        (stream, &mut status)
    );
    r == CUDA_SUCCESS && status != 0
}

/// Default streams (NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD) share one pool, with
/// deferred frees; other streams have their own, with stream-ordered frees.
fn pool_stream(stream: CuStream) -> Option<u64> {
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

impl Shim {
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

    fn malloc(&self, dev: usize, size: u64, stream: u64) -> Result<u64, CuResult> {
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

    /// `None`: not ours.
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

    /// `None`: not ours.
    fn free_async(&self, ptr: u64, stream: CuStream) -> Option<CuResult> {
        let Some(s) = pool_stream(stream) else {
            return self.free_deferred(ptr);
        };
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
    fn cached_free(&self, dev: usize) -> u64 {
        let Ok(st) = self.alloc.memory_stats(dev) else {
            return 0;
        };
        let reserved = st.segments.reserved_bytes[0].current.max(0) as u64;
        let allocated = st.blocks.allocated_bytes[0].current.max(0) as u64;
        reserved.saturating_sub(allocated) + self.deferred[dev].lock().bytes
    }
}

// ---------------------------------------------------------------------------------------
// Hooks. Each body runs inside `no_unwind`: a panic becomes an error status, never an
// unwind into the C caller.

fn no_unwind<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(on_panic)
}

fn alloc_hook(dptr: *mut CuDevicePtr, size: usize, stream: CuStream, real_fn: F) -> CuResult {
    let pass = || -> CuResult {
        if real_fn == F::MemAlloc {
            call_real!(F::MemAlloc, AllocFn, CUDA_ERROR_NOT_FOUND, (dptr, size))
        } else {
            call_real!(
                real_fn,
                AllocAsyncFn,
                CUDA_ERROR_NOT_FOUND,
                (dptr, size, stream)
            )
        }
    };
    if dptr.is_null() || size == 0 {
        return pass();
    }
    let Some(_g) = Inside::enter() else {
        return pass();
    };
    let Some(s) = shim() else {
        return pass();
    };
    if real_fn != F::MemAlloc && capturing(stream) {
        return pass();
    }
    let Some(dev) = current_device() else {
        return pass();
    };
    match s.malloc(dev, size as u64, pool_stream(stream).unwrap_or(0)) {
        Ok(p) => {
            // SAFETY: checked non-null above; the caller provides a writable CUdeviceptr.
            unsafe { *dptr = p };
            CUDA_SUCCESS
        }
        Err(e) => e,
    }
}

fn free_hook(ptr: CuDevicePtr, stream: Option<CuStream>, real_fn: F) -> CuResult {
    let pass = || -> CuResult {
        match stream {
            None => call_real!(F::MemFree, FreeFn, CUDA_ERROR_NOT_FOUND, (ptr)),
            Some(st) => call_real!(real_fn, FreeAsyncFn, CUDA_ERROR_NOT_FOUND, (ptr, st)),
        }
    };
    if ptr == 0 {
        return pass();
    }
    if EXITING.load(Ordering::Acquire) {
        // No driver calls once exit has begun; the process's memory goes with it.
        return CUDA_SUCCESS;
    }
    let Some(_g) = Inside::enter() else {
        return pass();
    };
    let Some(s) = shim() else {
        return pass();
    };
    let r = match stream {
        None => s.free_deferred(ptr),
        Some(st) => s.free_async(ptr, st),
    };
    r.unwrap_or_else(pass)
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CuDevicePtr, size: usize) -> CuResult {
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        alloc_hook(dptr, size, std::ptr::null_mut(), F::MemAlloc)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(ptr: CuDevicePtr) -> CuResult {
    no_unwind(CUDA_ERROR_UNKNOWN, || free_hook(ptr, None, F::MemFree))
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
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        alloc_hook(dptr, size, stream, F::MemAllocAsync)
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
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        // On the per-thread default stream, NULL means that thread's stream.
        let stream = if stream.is_null() {
            2usize as CuStream
        } else {
            stream
        };
        alloc_hook(dptr, size, stream, F::MemAllocAsyncPtsz)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(ptr: CuDevicePtr, stream: CuStream) -> CuResult {
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        free_hook(ptr, Some(stream), F::MemFreeAsync)
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(ptr: CuDevicePtr, stream: CuStream) -> CuResult {
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        let stream = if stream.is_null() {
            2usize as CuStream
        } else {
            stream
        };
        free_hook(ptr, Some(stream), F::MemFreeAsyncPtsz)
    })
}

/// Free memory as the driver reports it plus what the cache holds free.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        let r = call_real!(
            F::MemGetInfo,
            MemInfoFn,
            CUDA_ERROR_NOT_FOUND,
            (free, total)
        );
        if r != CUDA_SUCCESS || free.is_null() {
            return r;
        }
        if let Some(_g) = Inside::enter()
            && let Some(s) = shim()
            && let Some(dev) = current_device()
        {
            let extra = s.cached_free(dev) as usize;
            // SAFETY: the real call succeeded, so `free` is a valid pointer it wrote.
            unsafe { *free = (*free).saturating_add(extra) };
        }
        r
    })
}

/// The hook matching a real entry point the driver's resolver returned, if the shim
/// handles it.
fn substitute(p: *mut c_void) -> Option<*mut c_void> {
    let a = p as usize;
    let hooks: [(F, *mut c_void); 8] = [
        (F::MemAlloc, cuMemAlloc_v2 as *mut c_void),
        (F::MemFree, cuMemFree_v2 as *mut c_void),
        (F::MemAllocAsync, cuMemAllocAsync as *mut c_void),
        (F::MemAllocAsyncPtsz, cuMemAllocAsync_ptsz as *mut c_void),
        (F::MemFreeAsync, cuMemFreeAsync as *mut c_void),
        (F::MemFreeAsyncPtsz, cuMemFreeAsync_ptsz as *mut c_void),
        (F::MemGetInfo, cuMemGetInfo_v2 as *mut c_void),
        (F::GetProcAddressV2, cuGetProcAddress_v2 as *mut c_void),
    ];
    hooks
        .iter()
        .find(|(f, _)| real(*f) == a)
        .map(|&(_, h)| h)
        .or_else(|| (real(F::GetProcAddress) == a).then_some(cuGetProcAddress as *mut c_void))
}

fn after_resolve(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int) {
    if pfn.is_null() || symbol.is_null() || inside() {
        return;
    }
    // SAFETY: the resolver succeeded, so `pfn` holds the function it found.
    let found = unsafe { *pfn };
    if found.is_null() {
        return;
    }
    // SAFETY: `symbol` is the caller's NUL-terminated name.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    let ours = if name == b"cuGetProcAddress" {
        substitute(found).or(Some(if version >= 12000 {
            cuGetProcAddress_v2 as *mut c_void
        } else {
            cuGetProcAddress as *mut c_void
        }))
    } else {
        substitute(found)
    };
    if let Some(h) = ours {
        // SAFETY: as above, `pfn` is writable.
        unsafe { *pfn = h };
    }
}

/// The driver's resolver, with the shim's hooks substituted.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CuResult {
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        let r = call_real!(
            F::GetProcAddress,
            GpaFn,
            CUDA_ERROR_NOT_FOUND,
            (symbol, pfn, version, flags)
        );
        if r == CUDA_SUCCESS {
            after_resolve(symbol, pfn, version);
        }
        r
    })
}

/// The driver's resolver (CUDA 12 form), with the shim's hooks substituted.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CuResult {
    no_unwind(CUDA_ERROR_UNKNOWN, || {
        let r = call_real!(
            F::GetProcAddressV2,
            GpaV2Fn,
            CUDA_ERROR_NOT_FOUND,
            (symbol, pfn, version, flags, status)
        );
        if r == CUDA_SUCCESS {
            after_resolve(symbol, pfn, version);
        }
        r
    })
}

/// `dlsym`, interposed only to hand out the shim's resolver and hooks to whoever asks for
/// them by name (the CUDA runtime looks up `cuGetProcAddress` on its own libcuda handle).
///
/// # Safety
/// As glibc's `dlsym`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    no_unwind(std::ptr::null_mut(), || {
        let Some(real_dlsym) = real_dlsym() else {
            return std::ptr::null_mut();
        };
        // SAFETY: forwarded unchanged to glibc's dlsym.
        let r = unsafe { real_dlsym(handle, symbol) };
        if r.is_null() || symbol.is_null() || inside() {
            return r;
        }
        // SAFETY: dlsym's contract: a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(symbol) };
        if !name.to_bytes().starts_with(b"cu") {
            return r;
        }
        let Some(i) = NAMES.iter().position(|n| *n == name) else {
            return r;
        };
        let hook = match i {
            x if x == F::MemAlloc as usize => cuMemAlloc_v2 as *mut c_void,
            x if x == F::MemFree as usize => cuMemFree_v2 as *mut c_void,
            x if x == F::MemAllocAsync as usize => cuMemAllocAsync as *mut c_void,
            x if x == F::MemAllocAsyncPtsz as usize => cuMemAllocAsync_ptsz as *mut c_void,
            x if x == F::MemFreeAsync as usize => cuMemFreeAsync as *mut c_void,
            x if x == F::MemFreeAsyncPtsz as usize => cuMemFreeAsync_ptsz as *mut c_void,
            x if x == F::MemGetInfo as usize => cuMemGetInfo_v2 as *mut c_void,
            x if x == F::GetProcAddress as usize => cuGetProcAddress as *mut c_void,
            x if x == F::GetProcAddressV2 as usize => cuGetProcAddress_v2 as *mut c_void,
            x if x == F::CudaMalloc as usize => cudaMalloc as *mut c_void,
            x if x == F::CudaFree as usize => cudaFree as *mut c_void,
            x if x == F::CudaMallocAsync as usize => cudaMallocAsync as *mut c_void,
            x if x == F::CudaFreeAsync as usize => cudaFreeAsync as *mut c_void,
            _ => return r,
        };
        if hook == r {
            return r;
        }
        // Remember what the library really has under that name.
        let _ = REAL[i].compare_exchange(0, r as usize, Ordering::AcqRel, Ordering::Acquire);
        hook
    })
}

// ---------------------------------------------------------------------------------------
// The runtime API (programs linked to a shared libcudart).

fn runtime_device() -> Option<usize> {
    if let Some(d) = current_device() {
        return Some(d);
    }
    // No current context yet: let the runtime create its primary context (cudaFree(NULL)
    // is the documented way), then ask again.
    call_real!(
        F::CudaFree,
        CudaFreeFn,
        CUDA_ERROR_NOT_FOUND,
        (std::ptr::null_mut())
    );
    current_device()
}

fn runtime_alloc(dev_ptr: *mut *mut c_void, size: usize, stream: Option<CuStream>) -> c_int {
    let pass = || -> c_int {
        match stream {
            None => call_real!(
                F::CudaMalloc,
                CudaMallocFn,
                CUDART_ERROR_UNKNOWN,
                (dev_ptr, size)
            ),
            Some(s) => call_real!(
                F::CudaMallocAsync,
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
    let Some(s) = shim() else {
        return pass();
    };
    if stream.is_some_and(capturing) {
        return pass();
    }
    let Some(dev) = runtime_device() else {
        return pass();
    };
    match s.malloc(dev, size as u64, stream.and_then(pool_stream).unwrap_or(0)) {
        Ok(p) => {
            // SAFETY: checked non-null; the caller provides a writable pointer slot.
            unsafe { *dev_ptr = p as *mut c_void };
            0
        }
        Err(CUDA_ERROR_OUT_OF_MEMORY) => CUDART_ERROR_MEMORY_ALLOCATION,
        Err(_) => CUDART_ERROR_UNKNOWN,
    }
}

fn runtime_free(ptr: *mut c_void, stream: Option<CuStream>) -> c_int {
    let pass = || -> c_int {
        match stream {
            None => call_real!(F::CudaFree, CudaFreeFn, CUDART_ERROR_UNKNOWN, (ptr)),
            Some(s) => call_real!(
                F::CudaFreeAsync,
                CudaFreeAsyncFn,
                CUDART_ERROR_UNKNOWN,
                (ptr, s)
            ),
        }
    };
    if ptr.is_null() {
        return pass();
    }
    if EXITING.load(Ordering::Acquire) {
        return 0;
    }
    let Some(_g) = Inside::enter() else {
        return pass();
    };
    let Some(s) = shim() else {
        return pass();
    };
    let r = match stream {
        None => s.free_deferred(ptr as u64),
        Some(st) => s.free_async(ptr as u64, st),
    };
    match r {
        None => pass(),
        Some(CUDA_SUCCESS) => 0,
        Some(CUDA_ERROR_INVALID_VALUE) => 1, // cudaErrorInvalidValue
        Some(CUDA_ERROR_DEINITIALIZED) => 4,
        Some(_) => CUDART_ERROR_UNKNOWN,
    }
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaMalloc(dev_ptr: *mut *mut c_void, size: usize) -> c_int {
    no_unwind(CUDART_ERROR_UNKNOWN, || runtime_alloc(dev_ptr, size, None))
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaFree(ptr: *mut c_void) -> c_int {
    no_unwind(CUDART_ERROR_UNKNOWN, || runtime_free(ptr, None))
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
    no_unwind(CUDART_ERROR_UNKNOWN, || {
        runtime_alloc(dev_ptr, size, Some(stream))
    })
}

/// See the module docs.
///
/// # Safety
/// As the CUDA function of the same name: pointer arguments must be valid for it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaFreeAsync(ptr: *mut c_void, stream: CuStream) -> c_int {
    no_unwind(CUDART_ERROR_UNKNOWN, || runtime_free(ptr, Some(stream)))
}
