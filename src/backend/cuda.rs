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

/// Virtual-memory entry points, optional (older drivers lack them).
const VMM: [&str; 8] = [
    "cuMemGetAllocationGranularity",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
];

struct Device {
    ordinal: i32,
    handle: sys::CUdevice,
    /// Physical allocation behind each mapped page.
    pages: Mutex<std::collections::HashMap<u64, sys::CUmemGenericAllocationHandle>>,
    /// The retained primary context, as an address (raw pointers are not `Send`).
    ctx: OnceLock<Result<usize, BackendError>>,
    /// Recorded-and-released events, ready for reuse (addresses).
    events: Mutex<Vec<usize>>,
}

/// The real device backend. See the module documentation.
pub struct CudaBackend {
    devices: Vec<Device>,
    vmm: bool,
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
        let (missing, vmm): (Vec<&str>, bool) = std::panic::catch_unwind(|| {
            // SAFETY: the library is present (checked above), so `culib` loads it; looking
            // up a symbol's address has no side effect.
            let lib = unsafe { sys::culib() };
            // SAFETY: the symbol is only looked up, never called through this pointer.
            let has = |name: &&str| unsafe { lib.get::<*const ()>(name.as_bytes()) }.is_ok();
            let missing = REQUIRED.iter().copied().filter(|n| !has(n)).collect();
            (missing, VMM.iter().all(has))
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
                ordinal,
                handle,
                pages: Mutex::new(std::collections::HashMap::new()),
                ctx: OnceLock::new(),
                events: Mutex::new(Vec::new()),
            });
        }
        Ok(CudaBackend { devices, vmm })
    }

    fn vmm_device(&self, device: usize) -> Result<&Device, BackendError> {
        if !self.vmm {
            return Err(BackendError::Unsupported(
                "virtual memory management (the driver lacks cuMemCreate/cuMemMap)",
            ));
        }
        self.device(device)
    }

    fn prop(d: &Device) -> sys::CUmemAllocationProp {
        // SAFETY: an all-zero CUmemAllocationProp is a valid value (plain C struct of
        // integers and a null pointer); the fields that matter are set below.
        let mut p: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        p.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        p.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        p.location.id = d.ordinal;
        p
    }

    /// Unmap and release already mapped pages (used to undo a partial map).
    fn release_pages(&self, d: &Device, pages: &[u64], gran: u64) {
        let mut table = d.pages.lock();
        for &p in pages {
            // SAFETY: `p` is a page this backend mapped and recorded; unmapping it and
            // releasing its handle happens once (it is removed from the table).
            unsafe {
                let _ = sys::cuMemUnmap(p, gran as usize);
                if let Some(h) = table.remove(&p) {
                    let _ = sys::cuMemRelease(h);
                }
            }
        }
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

    fn vmm_granularity(&self, device: usize) -> Result<u64, BackendError> {
        let d = self.vmm_device(device)?;
        let _g = self.enter(device)?;
        self.granularity(d)
    }

    fn reserve_range(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        self.vmm_device(device)?;
        let _g = self.enter(device)?;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: `p` is a valid out-pointer; no fixed address or alignment is asked for.
        check(
            unsafe { sys::cuMemAddressReserve(&mut p, size as usize, 0, 0, 0) },
            "cuMemAddressReserve",
        )?;
        Ok(p)
    }

    fn free_range(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        self.vmm_device(device)?;
        let _g = self.enter(device)?;
        // SAFETY: (addr, size) is a range reserved by `reserve_range`, with no page mapped.
        check(
            unsafe { sys::cuMemAddressFree(addr, size as usize) },
            "cuMemAddressFree",
        )
    }

    fn map_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        let d = self.vmm_device(device)?;
        let _g = self.enter(device)?;
        let gran = self.granularity(d)?;
        let prop = Self::prop(d);
        // SAFETY: an all-zero access descriptor is valid; its fields are set below.
        let mut access: sys::CUmemAccessDesc = unsafe { std::mem::zeroed() };
        access.location = prop.location;
        access.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        let mut done: Vec<u64> = Vec::new();
        let mut page = addr;
        while page < addr + size {
            let mut h: sys::CUmemGenericAllocationHandle = 0;
            // SAFETY: `h` is a valid out-pointer; `prop` describes device memory.
            let r = check(
                unsafe { sys::cuMemCreate(&mut h, gran as usize, &prop, 0) },
                "cuMemCreate",
            )
            .and_then(|()| {
                // SAFETY: `page` is a granule of a reserved range, not mapped (the caller's
                // contract); `h` is a fresh handle of exactly one granule.
                check(
                    unsafe { sys::cuMemMap(page, gran as usize, 0, h, 0) },
                    "cuMemMap",
                )
                .inspect_err(|_| {
                    // SAFETY: `h` was created above and is not mapped.
                    let _ = unsafe { sys::cuMemRelease(h) };
                })
            });
            match r {
                Ok(()) => {
                    d.pages.lock().insert(page, h);
                    done.push(page);
                }
                Err(e) => {
                    self.release_pages(d, &done, gran);
                    return Err(e);
                }
            }
            page += gran;
        }
        // SAFETY: [addr, addr+size) is now mapped; `access` grants this device read-write.
        if let Err(e) = check(
            unsafe { sys::cuMemSetAccess(addr, size as usize, &access, 1) },
            "cuMemSetAccess",
        ) {
            self.release_pages(d, &done, gran);
            return Err(e);
        }
        Ok(())
    }

    fn unmap_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        let d = self.vmm_device(device)?;
        let _g = self.enter(device)?;
        let gran = self.granularity(d)?;
        // SAFETY: the range was mapped by `map_pages` (the caller's contract).
        check(
            unsafe { sys::cuMemUnmap(addr, size as usize) },
            "cuMemUnmap",
        )?;
        let mut table = d.pages.lock();
        let mut page = addr;
        while page < addr + size {
            if let Some(h) = table.remove(&page) {
                // SAFETY: the handle's only mapping was just removed.
                check(unsafe { sys::cuMemRelease(h) }, "cuMemRelease")?;
            }
            page += gran;
        }
        Ok(())
    }
}

impl CudaBackend {
    fn granularity(&self, d: &Device) -> Result<u64, BackendError> {
        let prop = Self::prop(d);
        let mut g: usize = 0;
        // SAFETY: `g` is a valid out-pointer and `prop` a valid property struct.
        check(
            unsafe {
                sys::cuMemGetAllocationGranularity(
                    &mut g,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
                )
            },
            "cuMemGetAllocationGranularity",
        )?;
        Ok((g as u64).max(1))
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
