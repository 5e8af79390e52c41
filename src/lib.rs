//! cudalloc: a caching CUDA device-memory allocator.
//!
//! It sits between a program and `cuMemAlloc`/`cuMemFree`, keeps freed blocks to reuse them,
//! splits and coalesces them to limit fragmentation, and reports what it holds. Policy
//! defaults follow PyTorch's caching allocator.
//!
//! ```
//! use cudalloc::{CachingAllocator, Config, SimBackend};
//! let backend = SimBackend::new(8 << 30); // a simulated 8 GiB device
//! let alloc = CachingAllocator::new(backend, Config::default()).unwrap();
//! let stream = alloc.backend().create_stream();
//! let a = alloc.malloc(3 << 20, stream).unwrap();
//! assert!(a.ptr() != 0);
//! drop(a);
//! println!("{}", alloc.memory_summary(0).unwrap());
//! ```

#![warn(missing_docs)]

pub mod allocator;
pub mod backend;
pub mod capacity;
pub mod config;
pub mod error;
pub mod explain;
pub mod history;
pub mod ids;
pub mod kernels;
pub mod oom;
pub mod policy;
pub mod reference;
pub mod replay;
pub mod snapshot;
pub mod standin;
pub mod stats;
pub mod summary;
pub mod trace;
pub mod units;

pub use allocator::{Allocation, CachingAllocator};
pub use backend::{Backend, MemInfo, SimBackend, StreamId};
pub use config::Config;
pub use error::{BackendError, Error, Result};
pub use oom::OomError;
pub use stats::MemoryStats;

/// The README's Rust example, compiled and run as a doc test so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
