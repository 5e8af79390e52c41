//! The stand-in CUDA: a `libcuda.so.1`, a `libcudart.so.13` and a `libnvidia-ml.so.1` that
//! share one model of a device with no compute (sources in `ffi/standin/`, compiled by the
//! build script and embedded here). Preloaded into a process, they let the PyTorch CUDA
//! wheel — and cudalloc's own `CudaBackend` and preload shim — run on a machine with no GPU:
//! device memory is address space only, streams and events complete at once, kernels and
//! copies are refused with `cudaErrorNotSupported`.
//!
//! This module only writes the libraries out and says how to preload them; it must not
//! start processes (the replay's reference engine and the tests do that).
//!
//! The device is configured through the environment of the process that loads it:
//! `CUDALLOC_STANDIN_CAPACITY` (bytes, or with a `KiB`/`MiB`/`GiB`/`TiB` suffix; default
//! 1 GiB), `CUDALLOC_STANDIN_DEVICES` (default 1), `CUDALLOC_STANDIN_REPORT` (a file that
//! receives `name=count` lines of every counted call and the peak bytes in use at exit, or
//! `stderr`) and `CUDALLOC_STANDIN_LOG` (log allocations and missing entry points).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// The three libraries, by file name (which is also their soname), in `LD_PRELOAD` order.
#[cfg(cudalloc_standin)]
const LIBS: [(&str, &[u8]); 3] = [
    (
        "libcudart.so.13",
        include_bytes!(concat!(env!("OUT_DIR"), "/libcudart.so.13")),
    ),
    (
        "libcuda.so.1",
        include_bytes!(concat!(env!("OUT_DIR"), "/libcuda.so.1")),
    ),
    (
        "libnvidia-ml.so.1",
        include_bytes!(concat!(env!("OUT_DIR"), "/libnvidia-ml.so.1")),
    ),
];
#[cfg(not(cudalloc_standin))]
const LIBS: [(&str, &[u8]); 0] = [];

/// Whether this build carries the stand-in (it needs a C compiler at build time).
pub fn available() -> bool {
    !LIBS.is_empty()
}

/// The stand-in's libraries written to a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standin {
    dir: PathBuf,
}

impl Standin {
    /// Write the libraries into `dir` (created if missing; files already there with the same
    /// contents are left alone), plus a `libcuda.so` link for loaders that ask for that name.
    ///
    /// # Errors
    /// This build has no stand-in (no C compiler when it was built), or the folder cannot be
    /// written.
    pub fn install(dir: &Path) -> io::Result<Standin> {
        if !available() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this cudalloc was built without a C compiler, so it carries no stand-in CUDA \
                 (install gcc, then rebuild)",
            ));
        }
        std::fs::create_dir_all(dir)?;
        for (name, bytes) in LIBS {
            let path = dir.join(name);
            if std::fs::read(&path).is_ok_and(|old| old == bytes) {
                continue;
            }
            // Write beside, then rename: a process loading the library never sees half a file.
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
        let link = dir.join("libcuda.so");
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            match std::os::unix::fs::symlink("libcuda.so.1", &link) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Ok(Standin {
            dir: dir.to_path_buf(),
        })
    }

    /// [`Standin::install`] into a folder named after the libraries' contents, so every
    /// process of this build shares one copy: under the user's cache directory
    /// (`$XDG_CACHE_HOME` or `~/.cache`, where other users cannot swap the libraries), else
    /// the system's temporary directory.
    ///
    /// # Errors
    /// As [`Standin::install`].
    pub fn in_temp_dir() -> io::Result<Standin> {
        // FNV-1a over the libraries: a new build gets a new folder.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (_, bytes) in LIBS {
            for b in bytes {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let name = format!("standin-{hash:016x}");
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        if let Some(c) = cache
            && let Ok(s) = Standin::install(&c.join("cudalloc").join(&name))
        {
            return Ok(s);
        }
        let user = std::env::var("USER").unwrap_or_default();
        Standin::install(&std::env::temp_dir().join(format!("cudalloc-{user}-{name}")))
    }

    /// The folder holding the libraries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The value for `LD_PRELOAD`: the runtime, the driver and NVML, so that they replace the
    /// libraries a program would otherwise find through its RPATH (PyTorch's wheel carries
    /// one to its own CUDA runtime) or `dlopen` by soname.
    pub fn preload(&self) -> OsString {
        let mut v = OsString::new();
        for (i, (name, _)) in LIBS.iter().enumerate() {
            if i > 0 {
                v.push(":");
            }
            v.push(self.dir.join(name));
        }
        v
    }

    /// [`Standin::preload`] after `first` (for example the preload shim), as one value.
    pub fn preload_after(&self, first: &Path) -> OsString {
        let mut v = OsString::from(first);
        v.push(":");
        v.push(self.preload());
        v
    }
}
