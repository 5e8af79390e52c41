//! cudalloc: a caching CUDA device-memory allocator.

pub mod backend;
pub mod config;
pub mod error;
pub mod oom;

pub use error::{BackendError, Error, Result};
