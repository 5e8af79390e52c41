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

/// A stream handle. For CUDA this is the raw `CUstream` value (0 is the legacy default
/// stream); for the simulator, an id from [`SimBackend::create_stream`] or any value the
/// caller chooses.
pub type StreamId = u64;

/// An event handle, as returned by [`Backend::record_event`].
pub type EventId = u64;

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
}
