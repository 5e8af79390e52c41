//! Error types: one enum for the crate, with *out of memory* kept apart from every other
//! failure so that callers (and the allocator's own retry loop) can tell "release cache and
//! try again" from "this will never work".

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error reported by a [`Backend`](crate::backend::Backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The device has no memory left for this request (`CUDA_ERROR_OUT_OF_MEMORY`).
    /// Worth releasing cached memory and retrying.
    OutOfMemory,
    /// Any other driver error. Never retried, never hidden.
    Driver {
        /// The driver's numeric status (`CUresult`), or -1 when there is none.
        code: i32,
        /// What was being done and the driver's name for the status.
        message: String,
    },
    /// The backend does not provide this operation.
    Unsupported(&'static str),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::OutOfMemory => write!(f, "device out of memory"),
            BackendError::Driver { code, message } => write!(f, "driver error {code}: {message}"),
            BackendError::Unsupported(what) => write!(f, "not supported by this backend: {what}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// Everything that can go wrong in cudalloc.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The allocation could not be satisfied even after releasing the cache.
    OutOfMemory(Box<crate::oom::OomError>),
    /// A driver/backend failure other than out of memory.
    Backend(BackendError),
    /// Bad configuration (`CUDALLOC_CONF` or a value set from code).
    Config(crate::config::ConfigError),
    /// A bad argument: zero or impossible size, a fraction out of range.
    InvalidArgument(String),
    /// A device index the allocator does not have.
    InvalidDevice {
        /// The index asked for.
        device: usize,
        /// How many devices there are.
        count: usize,
    },
    /// More streams in use on one device than the allocator serves.
    TooManyStreams {
        /// The device.
        device: usize,
        /// The most streams a device can have.
        limit: usize,
    },
    /// A feature the backend cannot provide (expandable segments without virtual-memory
    /// management).
    Unsupported(String),
    /// A pointer that this allocator did not hand out, or that was already freed.
    UnknownPointer(u64),
    /// A broken internal invariant. Reported instead of panicking in the user's process.
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfMemory(e) => write!(f, "{e}"),
            Error::Backend(e) => write!(f, "{e}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::InvalidDevice { device, count } => write!(
                f,
                "invalid argument: device {device} does not exist ({count} device(s))"
            ),
            Error::TooManyStreams { device, limit } => write!(
                f,
                "invalid argument: device {device}: more than {limit} streams in use"
            ),
            Error::Unsupported(m) => write!(f, "not supported: {m}"),
            Error::UnknownPointer(p) => write!(
                f,
                "pointer {p:#x} was not allocated by cudalloc or was already freed"
            ),
            Error::Internal(m) => write!(f, "internal error in cudalloc: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        Error::Backend(e)
    }
}

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        Error::Config(e)
    }
}
