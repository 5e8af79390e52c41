//! The driver's entry points as the backend calls them: resolved once from the library
//! cudarc loaded, with `int` results (a status the bindings do not list is then a number, not
//! undefined behaviour), the optional virtual-memory ones apart, and the status checks. It
//! must not hold device state: that is the backend's ([`super::CudaBackend`]).

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::sync::OnceLock;

use cudarc::driver::sys;

use crate::error::BackendError;

/// A `CUresult` read as the integer the driver returns. cudarc declares the entry points as
/// returning its `CUresult` enum, and a status the bindings do not list (a newer driver's)
/// would then be undefined behaviour; so the backend resolves the functions itself, from
/// the library cudarc loaded, with `int` results.
pub(super) type CuStatus = c_int;
pub(super) const CUDA_SUCCESS: CuStatus = 0;
pub(super) const CUDA_ERROR_OUT_OF_MEMORY: CuStatus = 2;
pub(super) const CUDA_ERROR_INVALID_DEVICE: CuStatus = 101;
pub(super) const CUDA_ERROR_NOT_READY: CuStatus = 600;
pub(super) const CU_EVENT_DISABLE_TIMING: c_uint = 2;

pub(super) type Prop = sys::CUmemAllocationProp;
pub(super) type Handle = sys::CUmemGenericAllocationHandle;

/// The driver entry points the backend calls (C names, C signatures).
#[allow(non_snake_case)]
pub(super) struct Driver {
    pub(super) cuInit: unsafe extern "C" fn(c_uint) -> CuStatus,
    pub(super) cuDeviceGetCount: unsafe extern "C" fn(*mut c_int) -> CuStatus,
    pub(super) cuDeviceGet: unsafe extern "C" fn(*mut sys::CUdevice, c_int) -> CuStatus,
    pub(super) cuDevicePrimaryCtxRetain:
        unsafe extern "C" fn(*mut sys::CUcontext, sys::CUdevice) -> CuStatus,
    pub(super) cuDevicePrimaryCtxRelease_v2: unsafe extern "C" fn(sys::CUdevice) -> CuStatus,
    pub(super) cuCtxGetCurrent: unsafe extern "C" fn(*mut sys::CUcontext) -> CuStatus,
    pub(super) cuCtxSetCurrent: unsafe extern "C" fn(sys::CUcontext) -> CuStatus,
    pub(super) cuCtxSynchronize: unsafe extern "C" fn() -> CuStatus,
    pub(super) cuMemAlloc_v2: unsafe extern "C" fn(*mut sys::CUdeviceptr, usize) -> CuStatus,
    pub(super) cuMemFree_v2: unsafe extern "C" fn(sys::CUdeviceptr) -> CuStatus,
    pub(super) cuMemGetInfo_v2: unsafe extern "C" fn(*mut usize, *mut usize) -> CuStatus,
    pub(super) cuEventCreate: unsafe extern "C" fn(*mut sys::CUevent, c_uint) -> CuStatus,
    pub(super) cuEventRecord: unsafe extern "C" fn(sys::CUevent, sys::CUstream) -> CuStatus,
    pub(super) cuEventQuery: unsafe extern "C" fn(sys::CUevent) -> CuStatus,
    pub(super) cuEventSynchronize: unsafe extern "C" fn(sys::CUevent) -> CuStatus,
    pub(super) cuEventDestroy_v2: unsafe extern "C" fn(sys::CUevent) -> CuStatus,
    pub(super) cuGetErrorName: unsafe extern "C" fn(CuStatus, *mut *const c_char) -> CuStatus,
    pub(super) vmm: Option<Vmm>,
}

/// Virtual-memory entry points (optional: older drivers lack them).
#[allow(non_snake_case)]
pub(super) struct Vmm {
    pub(super) cuMemGetAllocationGranularity:
        unsafe extern "C" fn(*mut usize, *const Prop, c_int) -> CuStatus,
    pub(super) cuMemAddressReserve: unsafe extern "C" fn(
        *mut sys::CUdeviceptr,
        usize,
        usize,
        sys::CUdeviceptr,
        u64,
    ) -> CuStatus,
    pub(super) cuMemAddressFree: unsafe extern "C" fn(sys::CUdeviceptr, usize) -> CuStatus,
    pub(super) cuMemCreate: unsafe extern "C" fn(*mut Handle, usize, *const Prop, u64) -> CuStatus,
    pub(super) cuMemRelease: unsafe extern "C" fn(Handle) -> CuStatus,
    pub(super) cuMemMap:
        unsafe extern "C" fn(sys::CUdeviceptr, usize, usize, Handle, u64) -> CuStatus,
    pub(super) cuMemUnmap: unsafe extern "C" fn(sys::CUdeviceptr, usize) -> CuStatus,
    pub(super) cuMemSetAccess: unsafe extern "C" fn(
        sys::CUdeviceptr,
        usize,
        *const sys::CUmemAccessDesc,
        usize,
    ) -> CuStatus,
}

/// Look `name` up in the library cudarc loaded.
///
/// # Safety
/// The library must be loaded (`culib` must not panic) and `F` must be `name`'s C type.
pub(super) unsafe fn symbol<F: Copy>(name: &str) -> Option<F> {
    // SAFETY: per the contract; cudarc keeps the library loaded for the process's life, so
    // the copied pointer cannot dangle.
    unsafe { sys::culib().get::<F>(name.as_bytes()) }
        .ok()
        .map(|s| *s)
}

impl Driver {
    /// Resolve every entry point; `Err` names the missing ones.
    ///
    /// # Safety
    /// The driver library must be loaded (see [`symbol`]).
    pub(super) unsafe fn load() -> Result<Driver, String> {
        let mut missing = Vec::new();
        macro_rules! req {
            ($name:ident) => {
                // SAFETY: the field's type is the C signature of the entry point.
                match unsafe { symbol(stringify!($name)) } {
                    Some(f) => Some(f),
                    None => {
                        missing.push(stringify!($name));
                        None
                    }
                }
            };
        }
        macro_rules! opt {
            ($name:ident) => {
                // SAFETY: the field's type is the C signature of the entry point.
                unsafe { symbol(stringify!($name)) }
            };
        }
        let vmm = (|| {
            Some(Vmm {
                cuMemGetAllocationGranularity: opt!(cuMemGetAllocationGranularity)?,
                cuMemAddressReserve: opt!(cuMemAddressReserve)?,
                cuMemAddressFree: opt!(cuMemAddressFree)?,
                cuMemCreate: opt!(cuMemCreate)?,
                cuMemRelease: opt!(cuMemRelease)?,
                cuMemMap: opt!(cuMemMap)?,
                cuMemUnmap: opt!(cuMemUnmap)?,
                cuMemSetAccess: opt!(cuMemSetAccess)?,
            })
        })();
        let d = (
            req!(cuInit),
            req!(cuDeviceGetCount),
            req!(cuDeviceGet),
            req!(cuDevicePrimaryCtxRetain),
            req!(cuDevicePrimaryCtxRelease_v2),
            req!(cuCtxGetCurrent),
            req!(cuCtxSetCurrent),
            req!(cuCtxSynchronize),
            req!(cuMemAlloc_v2),
            req!(cuMemFree_v2),
            req!(cuMemGetInfo_v2),
            req!(cuEventCreate),
            req!(cuEventRecord),
            req!(cuEventQuery),
            req!(cuEventSynchronize),
            req!(cuEventDestroy_v2),
            req!(cuGetErrorName),
        );
        if !missing.is_empty() {
            return Err(missing.join(", "));
        }
        let (a, b, c, dd, e, f, g, h, i, j, k, l, m, n, o, p, q) = d;
        Ok(Driver {
            cuInit: a.unwrap(),
            cuDeviceGetCount: b.unwrap(),
            cuDeviceGet: c.unwrap(),
            cuDevicePrimaryCtxRetain: dd.unwrap(),
            cuDevicePrimaryCtxRelease_v2: e.unwrap(),
            cuCtxGetCurrent: f.unwrap(),
            cuCtxSetCurrent: g.unwrap(),
            cuCtxSynchronize: h.unwrap(),
            cuMemAlloc_v2: i.unwrap(),
            cuMemFree_v2: j.unwrap(),
            cuMemGetInfo_v2: k.unwrap(),
            cuEventCreate: l.unwrap(),
            cuEventRecord: m.unwrap(),
            cuEventQuery: n.unwrap(),
            cuEventSynchronize: o.unwrap(),
            cuEventDestroy_v2: p.unwrap(),
            cuGetErrorName: q.unwrap(),
            vmm,
        })
    }
}

/// The driver, loaded once per process.
pub(super) static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

/// The name the driver gives a status (`CUDA_ERROR_INVALID_VALUE`), or its number.
pub(super) fn error_name(drv: &Driver, r: CuStatus) -> String {
    let mut s: *const c_char = std::ptr::null();
    // SAFETY: cuGetErrorName accepts any value and either fails or stores a pointer to a
    // static NUL-terminated string.
    let ok = unsafe { (drv.cuGetErrorName)(r, &mut s) } == CUDA_SUCCESS;
    if ok && !s.is_null() {
        // SAFETY: the driver returned a valid NUL-terminated static string.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    } else {
        format!("CUresult {r}")
    }
}

pub(super) fn check(drv: &Driver, r: CuStatus, what: &str) -> Result<(), BackendError> {
    match r {
        CUDA_SUCCESS => Ok(()),
        CUDA_ERROR_OUT_OF_MEMORY => Err(BackendError::OutOfMemory),
        other => Err(BackendError::Driver {
            code: other,
            message: format!("{what}: {}", error_name(drv, other)),
        }),
    }
}
