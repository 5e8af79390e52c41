//! The CUDA driver backend: the only code in cudalloc that calls the driver.
//!
//! It goes through `cudarc`'s raw driver bindings with dynamic loading, so the crate builds
//! and its tests run on machines without CUDA; [`CudaBackend::new`] returns an error (never
//! panics) when no driver can be loaded. Each device is driven through its primary context,
//! retained on first use and made current around each call that needs it (the caller's own
//! current context is restored afterwards). Events come from a per-device pool and are
//! created without timing.

use std::ffi::CStr;
use std::sync::OnceLock;

use cudarc::driver::sys;
use parking_lot::Mutex;

use super::{Backend, EventId, MemInfo, StreamId};
use crate::error::BackendError;

/// Every driver entry point this backend (and the fake driver used by the tests) must
/// provide; checked once at load time, so that a missing one is an error, not a panic.
const REQUIRED: [&str; 18] = [
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
    "cuGetErrorName",
    "cuDriverGetVersion",
];

fn error_name(r: sys::CUresult) -> String {
    let mut s: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorName writes a pointer to a static string (or leaves it null) and
    // has no other effect; the symbol was checked to exist when the backend was created.
    let ok = unsafe { sys::cuGetErrorName(r, &mut s) } == sys::CUresult::CUDA_SUCCESS;
    if ok && !s.is_null() {
        // SAFETY: the driver returned a valid NUL-terminated static string.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    } else {
        format!("{r:?}")
    }
}

fn check(r: sys::CUresult, what: &str) -> Result<(), BackendError> {
    match r {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Err(BackendError::OutOfMemory),
        other => Err(BackendError::Driver {
            code: other as i32,
            message: format!("{what}: {}", error_name(other)),
        }),
    }
}

struct Device {
    handle: sys::CUdevice,
    /// The retained primary context, as an address (raw pointers are not `Send`).
    ctx: OnceLock<Result<usize, BackendError>>,
    /// Recorded-and-released events, ready for reuse (addresses).
    events: Mutex<Vec<usize>>,
}

/// The real device backend. See the module documentation.
pub struct CudaBackend {
    devices: Vec<Device>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("devices", &self.devices.len())
            .finish()
    }
}

/// Whether a CUDA driver library can be loaded in this process.
pub fn driver_available() -> bool {
    std::panic::catch_unwind(|| {
        // SAFETY: only tries to dlopen the candidate library names; no other effect.
        unsafe { sys::is_culib_present() }
    })
    .unwrap_or(false)
}

/// Restores the caller's current context when dropped.
struct CtxGuard {
    previous: Option<sys::CUcontext>,
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.previous {
            // SAFETY: `prev` is the context that was current on this thread when the guard
            // was made (possibly null, which unsets); restoring it has no other effect.
            let _ = unsafe { sys::cuCtxSetCurrent(prev) };
        }
    }
}

impl CudaBackend {
    /// Load the driver, initialize it and count the devices.
    ///
    /// # Errors
    /// [`BackendError::Driver`] when no driver library can be loaded, an entry point is
    /// missing, or `cuInit` / `cuDeviceGetCount` fail.
    pub fn new() -> Result<CudaBackend, BackendError> {
        if !driver_available() {
            return Err(BackendError::Driver {
                code: -1,
                message: "no CUDA driver library (libcuda.so) could be loaded".into(),
            });
        }
        let missing: Vec<&str> = std::panic::catch_unwind(|| {
            // SAFETY: the library is present (checked above), so `culib` loads it; looking
            // up a symbol's address has no side effect.
            let lib = unsafe { sys::culib() };
            REQUIRED
                .iter()
                .copied()
                // SAFETY: the symbol is only looked up, never called through this pointer.
                .filter(|name| unsafe { lib.get::<*const ()>(name.as_bytes()) }.is_err())
                .collect()
        })
        .map_err(|_| BackendError::Driver {
            code: -1,
            message: "loading the CUDA driver library failed".into(),
        })?;
        if !missing.is_empty() {
            return Err(BackendError::Driver {
                code: -1,
                message: format!("the CUDA driver lacks entry points: {}", missing.join(", ")),
            });
        }
        // SAFETY: every entry point used below exists (checked above).
        check(unsafe { sys::cuInit(0) }, "cuInit")?;
        let mut n: std::ffi::c_int = 0;
        // SAFETY: `n` is a valid out-pointer for the duration of the call.
        check(unsafe { sys::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")?;
        let mut devices = Vec::new();
        for ordinal in 0..n {
            let mut handle: sys::CUdevice = 0;
            // SAFETY: `handle` is a valid out-pointer; `ordinal` is below the device count.
            check(
                unsafe { sys::cuDeviceGet(&mut handle, ordinal) },
                "cuDeviceGet",
            )?;
            devices.push(Device {
                handle,
                ctx: OnceLock::new(),
                events: Mutex::new(Vec::new()),
            });
        }
        Ok(CudaBackend { devices })
    }

    fn device(&self, device: usize) -> Result<&Device, BackendError> {
        self.devices
            .get(device)
            .ok_or_else(|| BackendError::Driver {
                code: sys::CUresult::CUDA_ERROR_INVALID_DEVICE as i32,
                message: format!(
                    "device {device} does not exist ({} devices)",
                    self.devices.len()
                ),
            })
    }

    /// Make `device`'s primary context current on this thread until the guard drops.
    fn enter(&self, device: usize) -> Result<CtxGuard, BackendError> {
        let d = self.device(device)?;
        let ctx = d
            .ctx
            .get_or_init(|| {
                let mut ctx: sys::CUcontext = std::ptr::null_mut();
                // SAFETY: `ctx` is a valid out-pointer and `d.handle` a device from
                // cuDeviceGet; the retain is released in Drop.
                check(
                    unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, d.handle) },
                    "cuDevicePrimaryCtxRetain",
                )
                .map(|()| ctx as usize)
            })
            .clone()? as sys::CUcontext;
        let mut current: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `current` is a valid out-pointer.
        check(
            unsafe { sys::cuCtxGetCurrent(&mut current) },
            "cuCtxGetCurrent",
        )?;
        if current == ctx {
            return Ok(CtxGuard { previous: None });
        }
        // SAFETY: `ctx` is a primary context retained above and alive until Drop.
        check(unsafe { sys::cuCtxSetCurrent(ctx) }, "cuCtxSetCurrent")?;
        Ok(CtxGuard {
            previous: Some(current),
        })
    }
}

impl Backend for CudaBackend {
    fn device_count(&self) -> usize {
        self.devices.len()
    }

    fn alloc_segment(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        let _g = self.enter(device)?;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: `p` is a valid out-pointer; the device's context is current.
        check(
            unsafe { sys::cuMemAlloc_v2(&mut p, size as usize) },
            "cuMemAlloc",
        )?;
        Ok(p)
    }

    fn free_segment(&self, device: usize, addr: u64, _size: u64) -> Result<(), BackendError> {
        let _g = self.enter(device)?;
        // SAFETY: `addr` came from cuMemAlloc on this device and is freed exactly once (the
        // allocator gives each segment back once).
        check(unsafe { sys::cuMemFree_v2(addr) }, "cuMemFree")
    }

    fn mem_info(&self, device: usize) -> Result<MemInfo, BackendError> {
        let _g = self.enter(device)?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: both are valid out-pointers; the device's context is current.
        check(
            unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) },
            "cuMemGetInfo",
        )?;
        Ok(MemInfo {
            free: free as u64,
            total: total as u64,
        })
    }

    fn record_event(&self, device: usize, stream: StreamId) -> Result<EventId, BackendError> {
        let _g = self.enter(device)?;
        let d = self.device(device)?;
        let pooled = d.events.lock().pop();
        let ev = match pooled {
            Some(e) => e as sys::CUevent,
            None => {
                let mut e: sys::CUevent = std::ptr::null_mut();
                // SAFETY: `e` is a valid out-pointer; the device's context is current.
                check(
                    unsafe {
                        sys::cuEventCreate(
                            &mut e,
                            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as std::ffi::c_uint,
                        )
                    },
                    "cuEventCreate",
                )?;
                e
            }
        };
        // SAFETY: `ev` is a live event of this context; `stream` is the caller's stream
        // handle (0 is the legacy default stream), passed through unchanged.
        if let Err(e) = check(
            unsafe { sys::cuEventRecord(ev, stream as sys::CUstream) },
            "cuEventRecord",
        ) {
            d.events.lock().push(ev as usize);
            return Err(e);
        }
        Ok(ev as EventId)
    }

    fn query_event(&self, _device: usize, event: EventId) -> Result<bool, BackendError> {
        // SAFETY: `event` was created by record_event and not yet released.
        match unsafe { sys::cuEventQuery(event as sys::CUevent) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            other => check(other, "cuEventQuery").map(|()| false),
        }
    }

    fn synchronize_event(&self, _device: usize, event: EventId) -> Result<(), BackendError> {
        // SAFETY: `event` was created by record_event and not yet released.
        check(
            unsafe { sys::cuEventSynchronize(event as sys::CUevent) },
            "cuEventSynchronize",
        )
    }

    fn release_event(&self, device: usize, event: EventId) {
        if let Ok(d) = self.device(device) {
            d.events.lock().push(event as usize);
        }
    }

    fn synchronize_device(&self, device: usize) -> Result<(), BackendError> {
        let _g = self.enter(device)?;
        // SAFETY: the device's context is current.
        check(unsafe { sys::cuCtxSynchronize() }, "cuCtxSynchronize")
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        for d in &self.devices {
            for e in d.events.lock().drain(..) {
                // SAFETY: pooled events are live and no longer referenced elsewhere.
                let _ = unsafe { sys::cuEventDestroy_v2(e as sys::CUevent) };
            }
            if let Some(Ok(_)) = d.ctx.get() {
                // SAFETY: releases the one retain taken in `enter`.
                let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(d.handle) };
            }
        }
    }
}
