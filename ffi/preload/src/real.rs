//! The real functions behind the hooks: the `Sym` enum generated from the symbol table,
//! finding each real function once (glibc's `dlsym` through `dlvsym`, then `RTLD_NEXT`, then
//! a `libcuda.so.1` the process loaded privately) and calling it, plus the two driver
//! queries the hooks need (current device, stream capture).
//!
//! Must not: call a hook (every lookup goes to glibc's `dlsym`, never the interposed one), or
//! hold any cache state. A real function that cannot be found is a status
//! (`CUDA_ERROR_NOT_FOUND` or the runtime's), never a crash.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{CUDA_ERROR_NOT_FOUND, CUDA_SUCCESS, CuDevicePtr, CuResult, CuStream};

/// What a row of the table is (see `table.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Dl,
    Resolver,
    Driver,
    Runtime,
    Called,
}

macro_rules! kind_of {
    (dl) => {
        Kind::Dl
    };
    (resolver) => {
        Kind::Resolver
    };
    (driver) => {
        Kind::Driver
    };
    (runtime) => {
        Kind::Runtime
    };
    (called) => {
        Kind::Called
    };
}

/// The shim's hook for a row, as a plain address (`None` for `called` rows).
macro_rules! hook_of {
    (dl $name:ident) => {
        Some(crate::resolve::$name as *mut c_void)
    };
    (resolver $name:ident) => {
        Some(crate::resolve::$name as *mut c_void)
    };
    (driver $name:ident) => {
        Some(crate::driver::$name as *mut c_void)
    };
    (runtime $name:ident) => {
        Some(crate::runtime::$name as *mut c_void)
    };
    (called $name:ident) => {
        None
    };
}

/// A NUL-terminated name made at compile time (fails to compile on an inner NUL).
const fn c_name(bytes: &'static [u8]) -> &'static CStr {
    match CStr::from_bytes_with_nul(bytes) {
        Ok(c) => c,
        Err(_) => panic!("a symbol name holds a NUL byte"),
    }
}

macro_rules! generate {
    ($($sym:ident $name:ident $kind:ident,)*) => {
        /// One symbol the shim handles (a row of `table.rs`).
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        #[repr(usize)]
        pub(crate) enum Sym {
            $($sym,)*
        }

        impl Sym {
            /// Every symbol, in table order.
            pub(crate) const ALL: &[Sym] = &[$(Sym::$sym,)*];
            const NAMES: &[&CStr] = &[$(c_name(concat!(stringify!($name), "\0").as_bytes()),)*];
            const KINDS: &[Kind] = &[$(kind_of!($kind),)*];

            /// The C name.
            pub(crate) fn name(self) -> &'static CStr {
                Sym::NAMES[self as usize]
            }

            pub(crate) fn kind(self) -> Kind {
                Sym::KINDS[self as usize]
            }

            /// The shim's exported function for this symbol (`None` for `called` rows).
            pub(crate) fn hook(self) -> Option<*mut c_void> {
                match self {
                    $(Sym::$sym => hook_of!($kind $name),)*
                }
            }
        }
    };
}

symbol_table!(generate);

const COUNT: usize = Sym::ALL.len();

impl Sym {
    /// The row named `name`.
    pub(crate) fn by_name(name: &CStr) -> Option<Sym> {
        Sym::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Whether `dlsym` hands out the hook for this name.
    pub(crate) fn handed_out_by_dlsym(self) -> bool {
        matches!(self.kind(), Kind::Resolver | Kind::Driver | Kind::Runtime)
    }

    /// Whether the hook replaces the real function in `cuGetProcAddress`'s answers.
    pub(crate) fn substituted_by_resolver(self) -> bool {
        matches!(self.kind(), Kind::Resolver | Kind::Driver)
    }
}

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

unsafe extern "C" {
    fn dlvsym(handle: *mut c_void, symbol: *const c_char, version: *const c_char) -> *mut c_void;
}

static REAL: [AtomicUsize; COUNT] = [const { AtomicUsize::new(0) }; COUNT];

/// glibc's own `dlsym` (found with `dlvsym`, which the shim does not interpose).
pub(crate) fn real_dlsym() -> Option<DlsymFn> {
    let slot = &REAL[Sym::Dlsym as usize];
    let mut p = slot.load(Ordering::Acquire);
    if p == 0 {
        for v in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
            // SAFETY: dlvsym with RTLD_NEXT and static strings has no precondition.
            let f = unsafe { dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), v.as_ptr()) };
            if !f.is_null() {
                p = f as usize;
                slot.store(p, Ordering::Release);
                break;
            }
        }
    }
    // SAFETY: a non-zero value is glibc's dlsym, which has this signature.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, DlsymFn>(p) })
}

/// The real function of `sym` (0 when it cannot be found).
pub(crate) fn real(sym: Sym) -> usize {
    if sym == Sym::Dlsym {
        return real_dlsym().map_or(0, |f| f as usize);
    }
    let slot = &REAL[sym as usize];
    let p = slot.load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    let Some(dlsym) = real_dlsym() else {
        return 0;
    };
    // SAFETY: glibc's dlsym with RTLD_NEXT and a static NUL-terminated name.
    let mut found = unsafe { dlsym(libc::RTLD_NEXT, sym.name().as_ptr()) };
    if found.is_null() && sym.kind() != Kind::Runtime {
        // libcuda may have been opened privately (RTLD_LOCAL) by the runtime: ask it.
        // SAFETY: RTLD_NOLOAD only returns a handle if the library is already loaded.
        let h =
            unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if !h.is_null() {
            // SAFETY: `h` is a live handle; the name is a static NUL-terminated string.
            found = unsafe { dlsym(h, sym.name().as_ptr()) };
            // SAFETY: balances the dlopen above (the library stays loaded).
            unsafe { libc::dlclose(h) };
        }
    }
    if !found.is_null() {
        slot.store(found as usize, Ordering::Release);
    }
    found as usize
}

/// Record what a library really has under `sym`'s name, when nothing is known yet (the
/// interposed `dlsym` saw it first).
pub(crate) fn remember(sym: Sym, found: *mut c_void) {
    if sym != Sym::Dlsym {
        let _ = REAL[sym as usize].compare_exchange(
            0,
            found as usize,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// Call the real function of a symbol: `call_real!(Sym::X, FnType, status if missing, (args))`.
macro_rules! call_real {
    ($sym:expr, $ty:ty, $missing:expr, ($($arg:expr),*)) => {{
        let p = $crate::real::real($sym);
        if p == 0 {
            $missing
        } else {
            // SAFETY: `p` is the real function named by `$sym`, whose C signature is `$ty`
            // (the aliases in real.rs copy CUDA's headers); the arguments are the caller's.
            unsafe { std::mem::transmute::<usize, $ty>(p)($($arg),*) }
        }
    }};
}

pub(crate) type AllocFn = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
pub(crate) type FreeFn = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
pub(crate) type AllocAsyncFn = unsafe extern "C" fn(*mut CuDevicePtr, usize, CuStream) -> CuResult;
pub(crate) type FreeAsyncFn = unsafe extern "C" fn(CuDevicePtr, CuStream) -> CuResult;
pub(crate) type MemInfoFn = unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult;
pub(crate) type GpaFn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CuResult;
pub(crate) type GpaV2Fn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CuResult;
type CtxGetDeviceFn = unsafe extern "C" fn(*mut c_int) -> CuResult;
type IsCapturingFn = unsafe extern "C" fn(CuStream, *mut c_int) -> CuResult;
pub(crate) type CudaMallocFn = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
pub(crate) type CudaFreeFn = unsafe extern "C" fn(*mut c_void) -> c_int;
pub(crate) type CudaMallocAsyncFn =
    unsafe extern "C" fn(*mut *mut c_void, usize, CuStream) -> c_int;
pub(crate) type CudaFreeAsyncFn = unsafe extern "C" fn(*mut c_void, CuStream) -> c_int;

/// The device of the calling thread's current context.
pub(crate) fn current_device() -> Option<usize> {
    let mut d: c_int = -1;
    let r = call_real!(
        Sym::CtxGetDevice,
        CtxGetDeviceFn,
        CUDA_ERROR_NOT_FOUND,
        (&mut d)
    );
    (r == CUDA_SUCCESS && d >= 0).then_some(d as usize)
}

/// Whether `stream` is capturing a graph (its allocations then belong to the graph).
pub(crate) fn capturing(stream: CuStream) -> bool {
    let mut status: c_int = 0;
    let r = call_real!(
        Sym::StreamIsCapturing,
        IsCapturingFn,
        CUDA_ERROR_NOT_FOUND,
        (stream, &mut status)
    );
    r == CUDA_SUCCESS && status != 0
}
