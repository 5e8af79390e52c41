//! The interposed resolvers: `dlsym` (hands out a hook to whoever asks for a hooked name —
//! the CUDA runtime looks up `cuGetProcAddress` on its own libcuda handle) and
//! `cuGetProcAddress`/`_v2` (the real resolver runs first; the function it found is swapped
//! for the hook of the same real function, so `_v2` and `_ptsz` variants map to the
//! matching hook). What is substituted comes from the symbol table.
//!
//! Must not: change any answer for a name the shim does not hook, answer for the shim's own
//! lookups (the re-entrancy guard), or touch the cache.

use std::ffi::{CStr, c_char, c_int, c_void};

use crate::guard::{boundary, inside};
use crate::real::{GpaFn, GpaV2Fn, Sym, real, real_dlsym, remember};
use crate::{CUDA_ERROR_NOT_FOUND, CUDA_ERROR_UNKNOWN, CUDA_SUCCESS, CuResult};

/// The hook for a real entry point the driver's resolver returned, if the shim has one.
fn substitute(found: *mut c_void) -> Option<*mut c_void> {
    let a = found as usize;
    Sym::ALL
        .iter()
        .copied()
        .filter(|s| s.substituted_by_resolver())
        .find(|&s| real(s) == a)
        .and_then(Sym::hook)
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
        // Asked for itself: the resolver of the signature that version has.
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
    boundary("cuGetProcAddress", CUDA_ERROR_UNKNOWN, || {
        let r = call_real!(
            Sym::GetProcAddress,
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
    boundary("cuGetProcAddress_v2", CUDA_ERROR_UNKNOWN, || {
        let r = call_real!(
            Sym::GetProcAddressV2,
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
    boundary("dlsym", std::ptr::null_mut(), || {
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
        let Some(sym) = Sym::by_name(name).filter(|s| s.handed_out_by_dlsym()) else {
            return r;
        };
        let Some(hook) = sym.hook() else {
            return r;
        };
        if hook == r {
            return r;
        }
        // Remember what the library really has under that name.
        remember(sym, r);
        hook
    })
}
