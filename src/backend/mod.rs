//! The mechanism layer: where device memory, streams and events really come from.
//!
//! A [`Backend`] allocates and frees *segments* (large device ranges the policy carves into
//! blocks), reports device memory, and provides the stream/event operations that
//! stream-ordered reuse needs. It holds no caching policy. [`CudaBackend`] is the only code
//! in the crate that calls the CUDA driver; [`SimBackend`] simulates a device for tests,
//! benchmarks and trace replay.

pub mod cuda;
pub mod sim;

pub use cuda::CudaBackend;

pub use sim::{SimBackend, SimCounts};

use crate::error::BackendError;

pub use crate::ids::{EventId, StreamId};

/// Free and total memory of a device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    /// Bytes the driver could still hand out.
    pub free: u64,
    /// Total bytes of the device.
    pub total: u64,
}

/// Device memory, streams and events. Implementations must be thread-safe: the allocator
/// calls them from many threads at once (never holding a lock of the backend's across
/// calls).
pub trait Backend: Send + Sync + 'static {
    /// Number of devices this backend drives.
    fn device_count(&self) -> usize;

    /// Allocate a segment of `size` bytes on `device`; returns its device address.
    ///
    /// # Errors
    /// [`BackendError::OutOfMemory`] when the device has no room (the caller may release
    /// cache and retry); [`BackendError::Driver`] for anything else.
    fn alloc_segment(&self, device: usize, size: u64) -> Result<u64, BackendError>;

    /// Return a segment obtained from [`Backend::alloc_segment`] to the device.
    ///
    /// # Errors
    /// A driver error; the segment must then be considered lost.
    fn free_segment(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError>;

    /// Free and total memory of `device`.
    ///
    /// # Errors
    /// A driver error.
    fn mem_info(&self, device: usize) -> Result<MemInfo, BackendError>;

    /// Record a new event on `stream` of `device` and return it. The event completes once
    /// all work submitted to the stream before this call has finished.
    ///
    /// # Errors
    /// A driver error.
    fn record_event(&self, device: usize, stream: StreamId) -> Result<EventId, BackendError>;

    /// Whether `event` has completed (non-blocking).
    ///
    /// # Errors
    /// A driver error (an event that failed is an error, not "complete").
    fn query_event(&self, device: usize, event: EventId) -> Result<bool, BackendError>;

    /// Block until `event` has completed.
    ///
    /// # Errors
    /// A driver error.
    fn synchronize_event(&self, device: usize, event: EventId) -> Result<(), BackendError>;

    /// Give an event back (after it completed or was synchronized). Never fails: a backend
    /// that cannot destroy it keeps the error to itself.
    fn release_event(&self, device: usize, event: EventId);

    /// Block until all work on `device` has finished.
    ///
    /// # Errors
    /// A driver error.
    fn synchronize_device(&self, device: usize) -> Result<(), BackendError>;

    // Virtual memory (for expandable segments): a range of addresses is reserved once, and
    // physical memory is mapped into it page by page (pages of `vmm_granularity` bytes), so
    // a segment can grow in place and give back pages it no longer uses. Backends without
    // it keep these defaults, which report `Unsupported`.

    /// The page size of mappings on `device` (`cuMemGetAllocationGranularity`).
    ///
    /// # Errors
    /// [`BackendError::Unsupported`] without virtual-memory support; a driver error.
    fn vmm_granularity(&self, _device: usize) -> Result<u64, BackendError> {
        Err(BackendError::Unsupported("virtual memory management"))
    }

    /// Reserve `size` bytes of device address space, no memory behind it
    /// (`cuMemAddressReserve`); `size` is a multiple of the granularity.
    ///
    /// # Errors
    /// As [`Backend::vmm_granularity`].
    fn reserve_range(&self, _device: usize, _size: u64) -> Result<u64, BackendError> {
        Err(BackendError::Unsupported("virtual memory management"))
    }

    /// Give back a reserved range (`cuMemAddressFree`); no page of it may be mapped.
    ///
    /// # Errors
    /// As [`Backend::vmm_granularity`].
    fn free_range(&self, _device: usize, _addr: u64, _size: u64) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("virtual memory management"))
    }

    /// Back `[addr, addr + size)` — page-aligned, inside a reserved range, not mapped — with
    /// new physical memory, one allocation per page, readable and writable by `device`
    /// (`cuMemCreate` + `cuMemMap` + `cuMemSetAccess`). On failure nothing stays mapped.
    ///
    /// # Errors
    /// [`BackendError::OutOfMemory`] when the device has no physical memory left; others.
    fn map_pages(&self, _device: usize, _addr: u64, _size: u64) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("virtual memory management"))
    }

    /// Unmap `[addr, addr + size)` (page-aligned, mapped by [`Backend::map_pages`]) and
    /// release its physical memory (`cuMemUnmap` + `cuMemRelease`).
    ///
    /// # Errors
    /// As [`Backend::vmm_granularity`].
    fn unmap_pages(&self, _device: usize, _addr: u64, _size: u64) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("virtual memory management"))
    }
}

/// Either backend, chosen at run time (the C library and the preload shim use this).
#[derive(Debug)]
pub enum AnyBackend {
    /// The real driver.
    Cuda(CudaBackend),
    /// A simulated device (boxed: it is much larger than the driver handle).
    Sim(Box<SimBackend>),
}

/// Default capacity of a simulated device from the environment.
pub const DEFAULT_SIM_CAPACITY: u64 = 16 << 30;

impl AnyBackend {
    /// The backend the environment asks for: `CUDALLOC_BACKEND=cuda` (default) or `sim`,
    /// with `CUDALLOC_SIM_CAPACITY` (e.g. `24GiB`) and `CUDALLOC_SIM_DEVICES` for the
    /// simulator (host-backed memory, events complete at once).
    ///
    /// # Errors
    /// A malformed variable, or the CUDA driver failing to start.
    pub fn from_env() -> Result<AnyBackend, String> {
        AnyBackend::from_vars(|k| std::env::var(k).ok())
    }

    /// [`AnyBackend::from_env`] over any variable lookup.
    ///
    /// # Errors
    /// As [`AnyBackend::from_env`].
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<AnyBackend, String> {
        match get("CUDALLOC_BACKEND").as_deref().map(str::trim) {
            None | Some("") | Some("cuda") => CudaBackend::new()
                .map(AnyBackend::Cuda)
                .map_err(|e| format!("CUDA backend: {e}")),
            Some("sim") => {
                let capacity = match get("CUDALLOC_SIM_CAPACITY") {
                    Some(s) => crate::units::parse_size(&s)
                        .map_err(|e| format!("CUDALLOC_SIM_CAPACITY: {e}"))?,
                    None => DEFAULT_SIM_CAPACITY,
                };
                let devices = match get("CUDALLOC_SIM_DEVICES") {
                    Some(s) => s
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| {
                            format!("CUDALLOC_SIM_DEVICES: '{s}' is not a number from 1 to 64")
                        })?,
                    None => 1,
                };
                Ok(AnyBackend::Sim(Box::new(
                    SimBackend::with_devices(devices, capacity).auto_complete(),
                )))
            }
            Some(other) => Err(format!(
                "CUDALLOC_BACKEND: unknown backend '{other}' (cuda or sim)"
            )),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Cuda($b) => $e,
            AnyBackend::Sim($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    fn device_count(&self) -> usize {
        delegate!(self, b => b.device_count())
    }
    fn alloc_segment(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        delegate!(self, b => b.alloc_segment(device, size))
    }
    fn free_segment(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        delegate!(self, b => b.free_segment(device, addr, size))
    }
    fn mem_info(&self, device: usize) -> Result<MemInfo, BackendError> {
        delegate!(self, b => b.mem_info(device))
    }
    fn record_event(&self, device: usize, stream: StreamId) -> Result<EventId, BackendError> {
        delegate!(self, b => b.record_event(device, stream))
    }
    fn query_event(&self, device: usize, event: EventId) -> Result<bool, BackendError> {
        delegate!(self, b => b.query_event(device, event))
    }
    fn synchronize_event(&self, device: usize, event: EventId) -> Result<(), BackendError> {
        delegate!(self, b => b.synchronize_event(device, event))
    }
    fn release_event(&self, device: usize, event: EventId) {
        delegate!(self, b => b.release_event(device, event))
    }
    fn synchronize_device(&self, device: usize) -> Result<(), BackendError> {
        delegate!(self, b => b.synchronize_device(device))
    }
    fn vmm_granularity(&self, device: usize) -> Result<u64, BackendError> {
        delegate!(self, b => b.vmm_granularity(device))
    }
    fn reserve_range(&self, device: usize, size: u64) -> Result<u64, BackendError> {
        delegate!(self, b => b.reserve_range(device, size))
    }
    fn free_range(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        delegate!(self, b => b.free_range(device, addr, size))
    }
    fn map_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        delegate!(self, b => b.map_pages(device, addr, size))
    }
    fn unmap_pages(&self, device: usize, addr: u64, size: u64) -> Result<(), BackendError> {
        delegate!(self, b => b.unmap_pages(device, addr, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        let b = AnyBackend::from_vars(vars(&[
            ("CUDALLOC_BACKEND", "sim"),
            ("CUDALLOC_SIM_CAPACITY", "2GiB"),
            ("CUDALLOC_SIM_DEVICES", "3"),
        ]))
        .unwrap();
        assert_eq!(b.device_count(), 3);
        assert_eq!(b.mem_info(2).unwrap().total, 2 << 30);
        let e = AnyBackend::from_vars(vars(&[("CUDALLOC_BACKEND", "tpu")])).unwrap_err();
        assert!(e.contains("unknown backend 'tpu'"), "{e}");
        let e = AnyBackend::from_vars(vars(&[
            ("CUDALLOC_BACKEND", "sim"),
            ("CUDALLOC_SIM_CAPACITY", "lots"),
        ]))
        .unwrap_err();
        assert!(e.contains("CUDALLOC_SIM_CAPACITY"), "{e}");
    }
}
