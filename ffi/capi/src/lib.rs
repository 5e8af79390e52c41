//! cudalloc's C library (`libcudalloc.so`, `libcudalloc.a`): the functions of
//! `ffi/include/cudalloc.h` over one process-wide [`CachingAllocator`].
//!
//! Every exported function runs its body inside [`boundary`], so a panic becomes
//! `CUDALLOC_ERROR_INTERNAL` (or NULL) and never unwinds into C; errors leave a message for
//! `cudalloc_last_error()` on the calling thread. The header is the contract: `bindings.rs`
//! is bindgen's output for it, and the build checks every declared function against the
//! definition here (see build.rs).

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use core::backend::AnyBackend;
use core::{CachingAllocator, Config, Error};
use parking_lot::Mutex;

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all
)]
mod generated {
    include!("bindings.rs");
}

use generated::{cudaStream_t, cudalloc_stats_t, cudalloc_status as S};
use stats::c_stats;

mod stats;

// Every header function is defined here with the header's exact signature.
include!(concat!(env!("OUT_DIR"), "/checks.rs"));

type Alloc = CachingAllocator<AnyBackend>;

static ALLOC: OnceLock<Result<Alloc, String>> = OnceLock::new();
static PENDING_CONF: Mutex<Option<Config>> = Mutex::new(None);

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    static LAST_STATUS: Cell<c_int> = const { Cell::new(0) };
}

/// Leave `msg` and status `s` for `cudalloc_last_error`/`cudalloc_last_status`.
fn set_error_status(s: S, msg: impl Into<String>) {
    let text = msg.into().replace('\0', " ");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(text).ok());
    LAST_STATUS.with(|c| c.set(s as c_int));
}

/// Forget the calling thread's last error. A message is only ever left together with a
/// status other than OK, so after a success there is nothing to clear: one thread-local read
/// on the hot path instead of two writes and a borrow.
#[inline]
fn clear_error() {
    if LAST_STATUS.with(Cell::get) != S::CUDALLOC_OK as c_int {
        LAST_ERROR.with(|e| *e.borrow_mut() = None);
        LAST_STATUS.with(|c| c.set(S::CUDALLOC_OK as c_int));
    }
}

/// The status and message for a library error.
fn fail(e: &Error) -> c_int {
    let s = match e {
        Error::OutOfMemory(_) => S::CUDALLOC_ERROR_OUT_OF_MEMORY,
        Error::Backend(_) => S::CUDALLOC_ERROR_DRIVER,
        // A configuration the backend cannot honour is the caller's configuration problem.
        Error::Config(_) | Error::Unsupported(_) => S::CUDALLOC_ERROR_CONFIG,
        Error::InvalidDevice { .. } => S::CUDALLOC_ERROR_INVALID_DEVICE,
        Error::InvalidArgument(_) | Error::TooManyStreams { .. } => {
            S::CUDALLOC_ERROR_INVALID_ARGUMENT
        }
        Error::UnknownPointer(_) => S::CUDALLOC_ERROR_UNKNOWN_POINTER,
        Error::Internal(_) => S::CUDALLOC_ERROR_INTERNAL,
        // Error is non-exhaustive: a variant added later is an internal error here until it
        // gets its own status.
        _ => S::CUDALLOC_ERROR_INTERNAL,
    };
    set_error_status(s, e.to_string());
    s as c_int
}

fn status(s: S, msg: impl Into<String>) -> c_int {
    set_error_status(s, msg);
    s as c_int
}

/// Run `f`, turning a panic into `on_panic` (with a message) so nothing unwinds into C.
fn boundary<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    clear_error();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error_status(
                S::CUDALLOC_ERROR_INTERNAL,
                format!("internal error in cudalloc (panic): {what}"),
            );
            on_panic
        }
    }
}

/// The process-wide allocator, created on first use.
fn allocator() -> Result<&'static Alloc, c_int> {
    let r = ALLOC.get_or_init(|| {
        let config = match PENDING_CONF.lock().take() {
            Some(c) => c,
            None => {
                let (c, notes) = Config::from_env().map_err(|e| e.to_string())?;
                for n in notes {
                    eprintln!("{n}");
                }
                c
            }
        };
        let backend = AnyBackend::from_env()?;
        CachingAllocator::new(backend, config).map_err(|e| e.to_string())
    });
    match r {
        Ok(a) => Ok(a),
        Err(e) => Err(status(
            S::CUDALLOC_ERROR_INIT,
            format!("cudalloc could not start: {e}"),
        )),
    }
}

fn device_index(a: &Alloc, device: c_int) -> Result<usize, c_int> {
    if device < 0 || device as usize >= a.device_count() {
        return Err(status(
            S::CUDALLOC_ERROR_INVALID_DEVICE,
            format!(
                "device {device} does not exist ({} device(s))",
                a.device_count()
            ),
        ));
    }
    Ok(device as usize)
}

/// The allocator and `device` as an index, or the status of why not.
fn allocator_on(device: c_int) -> Result<(&'static Alloc, usize), c_int> {
    let a = allocator()?;
    Ok((a, device_index(a, device)?))
}

fn malloc_impl(size: i64, device: c_int, stream: u64) -> *mut c_void {
    if size == 0 {
        return std::ptr::null_mut();
    }
    if size < 0 {
        status(
            S::CUDALLOC_ERROR_INVALID_ARGUMENT,
            format!("cannot allocate a negative size ({size})"),
        );
        return std::ptr::null_mut();
    }
    let a = match allocator() {
        Ok(a) => a,
        Err(_) => return std::ptr::null_mut(),
    };
    let Ok(d) = device_index(a, device) else {
        return std::ptr::null_mut();
    };
    match a.allocate_raw(d, size as u64, stream) {
        Ok(p) => p as *mut c_void,
        Err(e) => {
            fail(&e);
            std::ptr::null_mut()
        }
    }
}

/// `stream`: the stream the allocation was made on, if the caller says (a hint: a wrong one
/// costs a search).
#[inline]
fn free_impl(ptr: *mut c_void, device: c_int, stream: Option<u64>) {
    if ptr.is_null() {
        return;
    }
    let Ok(a) = allocator() else {
        return;
    };
    let Ok(d) = device_index(a, device) else {
        return;
    };
    if let Err(e) = a.free_raw_on(d, ptr as u64, stream) {
        fail(&e);
    }
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_malloc(size: isize, device: c_int, stream: cudaStream_t) -> *mut c_void {
    boundary(std::ptr::null_mut(), || {
        malloc_impl(size as i64, device, stream as u64)
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_free(
    ptr: *mut c_void,
    _size: isize,
    device: c_int,
    stream: cudaStream_t,
) {
    boundary((), || free_impl(ptr, device, Some(stream as u64)))
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_cupy_malloc(
    _param: *mut c_void,
    size: usize,
    device: c_int,
) -> *mut c_void {
    boundary(std::ptr::null_mut(), || {
        if size > i64::MAX as usize {
            status(
                S::CUDALLOC_ERROR_INVALID_ARGUMENT,
                format!("cannot allocate {size} bytes"),
            );
            return std::ptr::null_mut();
        }
        malloc_impl(size as i64, device, 0)
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_cupy_free(_param: *mut c_void, ptr: *mut c_void, device: c_int) {
    // CuPy's allocations are made on the default stream (cudalloc_cupy_malloc).
    boundary((), || free_impl(ptr, device, Some(0)))
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_record_stream(
    ptr: *mut c_void,
    device: c_int,
    stream: cudaStream_t,
) -> c_int {
    if ptr.is_null() {
        clear_error();
        return status(S::CUDALLOC_ERROR_NULL_ARGUMENT, "ptr is NULL");
    }
    with_device(device, |a, d| {
        a.record_stream_raw(d, ptr as u64, stream as u64)
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_record_stream_any(ptr: *mut c_void, stream: cudaStream_t) -> c_int {
    boundary(S::CUDALLOC_ERROR_INTERNAL as c_int, || {
        if ptr.is_null() {
            return status(S::CUDALLOC_ERROR_NULL_ARGUMENT, "ptr is NULL");
        }
        let a = match allocator() {
            Ok(a) => a,
            Err(s) => return s,
        };
        let Some(d) = a.device_of_raw(ptr as u64) else {
            return status(
                S::CUDALLOC_ERROR_UNKNOWN_POINTER,
                format!("{ptr:p} was not allocated by cudalloc (or is already freed)"),
            );
        };
        match a.record_stream_raw(d, ptr as u64, stream as u64) {
            Ok(()) => S::CUDALLOC_OK as c_int,
            Err(e) => fail(&e),
        }
    })
}

/// See the header.
///
/// # Safety
/// `size` must be NULL or point to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudalloc_base_allocation(
    ptr: *mut c_void,
    size: *mut usize,
) -> *mut c_void {
    boundary(std::ptr::null_mut(), || {
        if ptr.is_null() || size.is_null() {
            status(S::CUDALLOC_ERROR_NULL_ARGUMENT, "ptr or size is NULL");
            return std::ptr::null_mut();
        }
        let Ok(a) = allocator() else {
            return std::ptr::null_mut();
        };
        let p = ptr as u64;
        let Some(d) = a.device_of_raw(p) else {
            status(
                S::CUDALLOC_ERROR_UNKNOWN_POINTER,
                format!("{ptr:p} was not allocated by cudalloc (or is already freed)"),
            );
            return std::ptr::null_mut();
        };
        let segments = match a.snapshot(d) {
            Ok(s) => s,
            Err(e) => {
                fail(&e);
                return std::ptr::null_mut();
            }
        };
        match segments.iter().find(|s| s.addr <= p && p < s.addr + s.size) {
            Some(s) => {
                // SAFETY: non-null, and the caller guarantees it points to a writable size_t.
                unsafe { *size = s.size as usize };
                s.addr as *mut c_void
            }
            None => {
                status(
                    S::CUDALLOC_ERROR_INTERNAL,
                    format!("{ptr:p} is live but inside no segment"),
                );
                std::ptr::null_mut()
            }
        }
    })
}

/// Run `f` on the allocator and one valid device.
fn with_device(device: c_int, f: impl FnOnce(&Alloc, usize) -> Result<(), Error>) -> c_int {
    boundary(S::CUDALLOC_ERROR_INTERNAL as c_int, || {
        let (a, d) = match allocator_on(device) {
            Ok(x) => x,
            Err(s) => return s,
        };
        match f(a, d) {
            Ok(()) => S::CUDALLOC_OK as c_int,
            Err(e) => fail(&e),
        }
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_empty_cache(device: c_int) -> c_int {
    if device == -1 {
        return boundary(S::CUDALLOC_ERROR_INTERNAL as c_int, || {
            let a = match allocator() {
                Ok(a) => a,
                Err(s) => return s,
            };
            match a.empty_cache(None) {
                Ok(()) => S::CUDALLOC_OK as c_int,
                Err(e) => fail(&e),
            }
        });
    }
    with_device(device, |a, d| a.empty_cache(Some(d)))
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_set_memory_fraction(fraction: f64, device: c_int) -> c_int {
    with_device(device, |a, d| a.set_memory_fraction(d, fraction))
}

/// Smallest `out_size` accepted: the header fields (size and version).
const STATS_HEADER: usize = 16;

/// See the header.
///
/// # Safety
/// `out` must point to at least `out_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudalloc_get_stats(
    device: c_int,
    out: *mut cudalloc_stats_t,
    out_size: usize,
) -> c_int {
    boundary(S::CUDALLOC_ERROR_INTERNAL as c_int, || {
        if out.is_null() {
            return status(S::CUDALLOC_ERROR_NULL_ARGUMENT, "out is NULL");
        }
        if out_size < STATS_HEADER {
            return status(
                S::CUDALLOC_ERROR_STRUCT_SIZE,
                format!("out_size {out_size} is smaller than the {STATS_HEADER}-byte header"),
            );
        }
        let (a, d) = match allocator_on(device) {
            Ok(x) => x,
            Err(s) => return s,
        };
        let m = match a.memory_stats(d) {
            Ok(m) => m,
            Err(e) => return fail(&e),
        };
        let mut full = c_stats(&m);
        let n = out_size.min(std::mem::size_of::<cudalloc_stats_t>());
        full.struct_size = n;
        // SAFETY: `full` is a valid value of n ≥ 16 bytes or more; the caller guarantees
        // `out` has `out_size` ≥ n writable bytes; the regions cannot overlap (`full` is
        // a local).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&full as *const cudalloc_stats_t).cast::<u8>(),
                out.cast::<u8>(),
                n,
            );
        }
        S::CUDALLOC_OK as c_int
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_reset_peak_stats(device: c_int) -> c_int {
    with_device(device, |a, d| a.reset_peak_memory_stats(d))
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_reset_accumulated_stats(device: c_int) -> c_int {
    with_device(device, |a, d| a.reset_accumulated_memory_stats(d))
}

/// See the header.
///
/// # Safety
/// `buf` must be NULL or point to at least `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudalloc_memory_summary(
    device: c_int,
    buf: *mut c_char,
    len: usize,
) -> usize {
    boundary(0, || {
        let Ok((a, d)) = allocator_on(device) else {
            return 0;
        };
        let text = match a.memory_summary(d) {
            Ok(t) => t,
            Err(e) => {
                fail(&e);
                return 0;
            }
        };
        let needed = text.len() + 1;
        if !buf.is_null() && len >= needed {
            // SAFETY: the caller guarantees `len` writable bytes at `buf`, and
            // len ≥ needed = text bytes + NUL.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
                *buf.add(text.len()) = 0;
            }
        }
        needed
    })
}

/// Read a C string argument.
///
/// # Safety
/// `p` must be NULL or a NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, c_int> {
    if p.is_null() {
        return Err(status(
            S::CUDALLOC_ERROR_NULL_ARGUMENT,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: non-null, and the caller guarantees NUL termination.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| {
        status(
            S::CUDALLOC_ERROR_INVALID_ARGUMENT,
            format!("{what} is not UTF-8"),
        )
    })
}

/// See the header.
///
/// # Safety
/// `conf` must be NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudalloc_configure(conf: *const c_char) -> c_int {
    boundary(S::CUDALLOC_ERROR_INTERNAL as c_int, || {
        // SAFETY: forwarded from the caller's guarantee.
        let s = match unsafe { c_str(conf, "conf") } {
            Ok(s) => s,
            Err(st) => return st,
        };
        let cfg = match Config::parse_from("cudalloc_configure", s) {
            Ok(c) => c,
            Err(e) => return fail(&Error::Config(e)),
        };
        let mut pending = PENDING_CONF.lock();
        if ALLOC.get().is_some() {
            return status(
                S::CUDALLOC_ERROR_ALREADY_INITIALIZED,
                "cudalloc_configure must come before the allocator is first used",
            );
        }
        *pending = Some(cfg);
        S::CUDALLOC_OK as c_int
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_record_history(enabled: c_int, max_entries: usize) -> c_int {
    boundary(S::CUDALLOC_ERROR_INTERNAL as c_int, || match allocator() {
        Ok(a) => {
            a.record_history(enabled != 0, max_entries);
            S::CUDALLOC_OK as c_int
        }
        Err(s) => s,
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_set_history_context(context: u64) {
    // No boundary: a thread-local store cannot panic, and it must not clear the last error.
    core::history::set_thread_context(context);
}

/// See the header.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudalloc_dump_snapshot(path: *const c_char) -> c_int {
    boundary(S::CUDALLOC_ERROR_INTERNAL as c_int, || {
        // SAFETY: forwarded from the caller's guarantee.
        let p = match unsafe { c_str(path, "path") } {
            Ok(s) => s,
            Err(st) => return st,
        };
        let a = match allocator() {
            Ok(a) => a,
            Err(s) => return s,
        };
        let bytes = match a.snapshot_pickle() {
            Ok(b) => b,
            Err(e) => return fail(&e),
        };
        match std::fs::write(p, bytes) {
            Ok(()) => S::CUDALLOC_OK as c_int,
            Err(e) => status(S::CUDALLOC_ERROR_IO, format!("cannot write {p}: {e}")),
        }
    })
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_last_error() -> *const c_char {
    // No boundary: it must not clear the error it reports, and it cannot panic.
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_last_status() -> c_int {
    // No boundary, for the same reason as cudalloc_last_error.
    LAST_STATUS.with(Cell::get)
}

/// See the header.
#[unsafe(no_mangle)]
pub extern "C" fn cudalloc_version() -> *const c_char {
    static V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(c) => c,
            Err(_) => c"unknown",
        };
    V.as_ptr()
}
