//! The CUDA driver backend: the only code in cudalloc that calls the driver.
//!
//! It goes through `cudarc`'s raw driver bindings with dynamic loading, so the crate builds
//! and its tests run on machines without CUDA; [`CudaBackend::new`] returns an error (never
//! panics) when no driver can be loaded. Each device is driven through its primary context,
//! retained on first use and made current around each call that needs it (the caller's own
//! current context is restored afterwards). Events come from a per-device pool and are
//! created without timing.

use std::ffi::c_int;
use std::sync::OnceLock;

use cudarc::driver::sys;
use parking_lot::Mutex;

mod driver;

use super::{Backend, EventId, MemInfo, StreamId};
use crate::error::BackendError;
use driver::{
    CU_EVENT_DISABLE_TIMING, CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_NOT_READY, CUDA_SUCCESS, DRIVER,
    Driver, Vmm, check,
};

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
    drv: &'static Driver,
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
    drv: &'static Driver,
    previous: Option<sys::CUcontext>,
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.previous {
            // SAFETY: `prev` is the context that was current on this thread when the guard
            // was made (possibly null, which unsets); restoring it has no other effect.
            let _ = unsafe { (self.drv.cuCtxSetCurrent)(prev) };
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
        let drv = DRIVER
            .get_or_init(|| {
                std::panic::catch_unwind(|| {
                    // SAFETY: the library is present (checked above), so `culib` loads it;
                    // `Driver::load` only looks symbols up.
                    unsafe { Driver::load() }
                })
                .unwrap_or_else(|_| Err("loading the CUDA driver library failed".into()))
            })
            .as_ref()
            .map_err(|m| BackendError::Driver {
                code: -1,
                message: format!("the CUDA driver lacks entry points: {m}"),
            })?;
        // SAFETY: every entry point used below exists (checked above).
        check(drv, unsafe { (drv.cuInit)(0) }, "cuInit")?;
        let mut n: std::ffi::c_int = 0;
        check(
            drv,
            // SAFETY: `n` is a valid out-pointer for the duration of the call.
            unsafe { (drv.cuDeviceGetCount)(&mut n) },
            "cuDeviceGetCount",
        )?;
        let mut devices = Vec::new();
        for ordinal in 0..n {
            let mut handle: sys::CUdevice = 0;
            check(
                drv,
                // SAFETY: `handle` is a valid out-pointer; `ordinal` is below the device count.
                unsafe { (drv.cuDeviceGet)(&mut handle, ordinal) },
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
        Ok(CudaBackend { drv, devices })
    }

    fn vmm(&self) -> Result<&'static Vmm, BackendError> {
        self.drv.vmm.as_ref().ok_or(BackendError::Unsupported(
            "virtual memory management (the driver lacks cuMemCreate/cuMemMap)",
        ))
    }

    fn vmm_device(&self, device: usize) -> Result<&Device, BackendError> {
        if self.drv.vmm.is_none() {
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
        let Ok(vmm) = self.vmm() else {
            return;
        };
        let mut table = d.pages.lock();
        for &p in pages {
            // SAFETY: `p` is a page this backend mapped and recorded; unmapping it and
            // releasing its handle happens once (it is removed from the table).
            unsafe {
                let _ = (vmm.cuMemUnmap)(p, gran as usize);
                if let Some(h) = table.remove(&p) {
                    let _ = (vmm.cuMemRelease)(h);
                }
            }
        }
    }

    fn device(&self, device: usize) -> Result<&Device, BackendError> {
        self.devices
            .get(device)
            .ok_or_else(|| BackendError::Driver {
                code: CUDA_ERROR_INVALID_DEVICE,
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
                    self.drv,
                    unsafe { (self.drv.cuDevicePrimaryCtxRetain)(&mut ctx, d.handle) },
                    "cuDevicePrimaryCtxRetain",
                )
                .map(|()| ctx as usize)
            })
            .clone()? as sys::CUcontext;
        let mut current: sys::CUcontext = std::ptr::null_mut();
        check(
            self.drv,
            // SAFETY: `current` is a valid out-pointer.
            unsafe { (self.drv.cuCtxGetCurrent)(&mut current) },
            "cuCtxGetCurrent",
        )?;
        if current == ctx {
            return Ok(CtxGuard {
                drv: self.drv,
                previous: None,
            });
        }
        check(
            self.drv,
            // SAFETY: `ctx` is a primary context retained above and alive until Drop.
            unsafe { (self.drv.cuCtxSetCurrent)(ctx) },
            "cuCtxSetCurrent",
        )?;
        Ok(CtxGuard {
            drv: self.drv,
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
        check(
            self.drv,
            // SAFETY: `p` is a valid out-pointer; the device's context is current.
            unsafe { (self.drv.cuMemAlloc_v2)(&mut p, size as usize) },
            "cuMemAlloc",
        )?;
        Ok(p)
    }

    fn free_segment(&self, device: usize, addr: u64, _size: u64) -> Result<(), BackendError> {
        let _g = self.enter(device)?;
        // SAFETY: `addr` came from cuMemAlloc on this device and is freed exactly once (the
        // allocator gives each segment back once).
        check(
            self.drv,
            unsafe { (self.drv.cuMemFree_v2)(addr) },
            "cuMemFree",
        )
    }

    fn mem_info(&self, device: usize) -> Result<MemInfo, BackendError> {
        let _g = self.enter(device)?;
        let (mut free, mut total) = (0usize, 0usize);
        check(
            self.drv,
            // SAFETY: both are valid out-pointers; the device's context is current.
            unsafe { (self.drv.cuMemGetInfo_v2)(&mut free, &mut total) },
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
                check(
                    self.drv,
                    // SAFETY: `e` is a valid out-pointer; the device's context is current.
                    unsafe { (self.drv.cuEventCreate)(&mut e, CU_EVENT_DISABLE_TIMING) },
                    "cuEventCreate",
                )?;
                e
            }
        };
        if let Err(e) = check(
            self.drv,
            // SAFETY: `ev` is a live event of this context; `stream` is the caller's stream
            // handle (0 is the legacy default stream), passed through unchanged.
            unsafe { (self.drv.cuEventRecord)(ev, stream as sys::CUstream) },
            "cuEventRecord",
        ) {
            d.events.lock().push(ev as usize);
            return Err(e);
        }
        Ok(ev as EventId)
    }

    fn query_event(&self, _device: usize, event: EventId) -> Result<bool, BackendError> {
        // SAFETY: `event` was created by record_event and not yet released.
        match unsafe { (self.drv.cuEventQuery)(event as sys::CUevent) } {
            CUDA_SUCCESS => Ok(true),
            CUDA_ERROR_NOT_READY => Ok(false),
            other => check(self.drv, other, "cuEventQuery").map(|()| false),
        }
    }

    fn synchronize_event(&self, _device: usize, event: EventId) -> Result<(), BackendError> {
        // SAFETY: `event` was created by record_event and not yet released.
        check(
            self.drv,
            unsafe { (self.drv.cuEventSynchronize)(event as sys::CUevent) },
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
        check(
            self.drv,
            unsafe { (self.drv.cuCtxSynchronize)() },
            "cuCtxSynchronize",
        )
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
        check(
            self.drv,
            // SAFETY: `p` is a valid out-pointer; no fixed address or alignment is asked for.
            unsafe { (self.vmm()?.cuMemAddressReserve)(&mut p, size as usize, 0, 0, 0) },
            "cuMemAddressReserve",
        )?;
        Ok(p)
    }

    fn free_range(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        self.vmm_device(device)?;
        let _g = self.enter(device)?;
        // SAFETY: (addr, size) is a range reserved by `reserve_range`, with no page mapped.
        check(
            self.drv,
            unsafe { (self.vmm()?.cuMemAddressFree)(addr, size as usize) },
            "cuMemAddressFree",
        )
    }

    fn map_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        let d = self.vmm_device(device)?;
        let vmm = self.vmm()?;
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
                self.drv,
                unsafe { (vmm.cuMemCreate)(&mut h, gran as usize, &prop, 0) },
                "cuMemCreate",
            )
            .and_then(|()| {
                // SAFETY: `page` is a granule of a reserved range, not mapped (the caller's
                // contract); `h` is a fresh handle of exactly one granule.
                check(
                    self.drv,
                    unsafe { (vmm.cuMemMap)(page, gran as usize, 0, h, 0) },
                    "cuMemMap",
                )
                .inspect_err(|_| {
                    // SAFETY: `h` was created above and is not mapped.
                    let _ = unsafe { (vmm.cuMemRelease)(h) };
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
        if let Err(e) = check(
            self.drv,
            // SAFETY: [addr, addr+size) is now mapped; `access` grants this device read-write.
            unsafe { (vmm.cuMemSetAccess)(addr, size as usize, &access, 1) },
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
        check(
            self.drv,
            // SAFETY: the range was mapped by `map_pages` (the caller's contract).
            unsafe { (self.vmm()?.cuMemUnmap)(addr, size as usize) },
            "cuMemUnmap",
        )?;
        let mut table = d.pages.lock();
        let mut page = addr;
        while page < addr + size {
            if let Some(h) = table.remove(&page) {
                check(
                    self.drv,
                    // SAFETY: the handle's only mapping was just removed.
                    unsafe { (self.vmm()?.cuMemRelease)(h) },
                    "cuMemRelease",
                )?;
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
        check(
            self.drv,
            // SAFETY: `g` is a valid out-pointer and `prop` a valid property struct.
            unsafe {
                (self.vmm()?.cuMemGetAllocationGranularity)(
                    &mut g,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM
                        as c_int,
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
                let _ = unsafe { (self.drv.cuEventDestroy_v2)(e as sys::CUevent) };
            }
            if let Some(Ok(_)) = d.ctx.get() {
                // SAFETY: releases the one retain taken in `enter`.
                let _ = unsafe { (self.drv.cuDevicePrimaryCtxRelease_v2)(d.handle) };
            }
        }
    }
}
