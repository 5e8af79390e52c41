//! Build script of the `cudalloc` crate: compiles the stand-in CUDA (`ffi/standin/`: a
//! `libcuda.so.1`, a `libcudart.so.13` and a `libnvidia-ml.so.1` over one model of a device
//! with no compute) with the system C compiler, so the crate can embed them
//! ([`cudalloc::standin`]) and write them out wherever real PyTorch or a test needs them.
//!
//! A machine with no C compiler still builds the crate: the stand-in is then left out (with
//! one warning) and what needs it says so at run time. Nothing here needs CUDA.
//!
//! The kernels (`kernels/*.cu`) are embedded as source by `src/kernels.rs`; when `nvcc` is on
//! the `PATH` (or in `$CUDA_HOME/bin`) they are also compiled to PTX for `compute_90` (the
//! H200), and a missing or failing `nvcc` only leaves the PTX out.

use std::env;
use std::path::{Path, PathBuf};

/// One library: its file name (and soname), its source, and extra linker arguments.
struct Lib {
    name: &'static str,
    source: &'static str,
    link: &'static [&'static str],
}

const LIBS: [Lib; 3] = [
    Lib {
        name: "libcuda.so.1",
        source: "cuda.c",
        link: &["-lpthread"],
    },
    Lib {
        name: "libcudart.so.13",
        source: "cudart.c",
        link: &[
            "-Wl,--version-script=ffi/standin/cudart.map",
            "-l:libcuda.so.1",
        ],
    },
    Lib {
        name: "libnvidia-ml.so.1",
        source: "nvml.c",
        link: &["-l:libcuda.so.1"],
    },
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cudalloc_standin)");
    println!("cargo::rerun-if-changed=ffi/standin");
    println!("cargo::rerun-if-env-changed=CC");
    println!("cargo::rustc-check-cfg=cfg(cudalloc_kernels_ptx)");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    match build_standin(&out) {
        Ok(()) => println!("cargo::rustc-cfg=cudalloc_standin"),
        Err(e) => println!(
            "cargo::warning=the stand-in CUDA (ffi/standin) was not built, so `cudalloc replay \
             --reference pytorch` and the real-PyTorch tests are unavailable: {e}"
        ),
    }
    if let Some(nvcc) = find_nvcc() {
        match build_ptx(&nvcc, &out) {
            Ok(()) => println!("cargo::rustc-cfg=cudalloc_kernels_ptx"),
            Err(e) => println!("cargo::warning=kernels/tag.cu was not compiled to PTX: {e}"),
        }
    }
}

/// `nvcc` from `$CUDA_HOME/bin`, else from the `PATH`.
fn find_nvcc() -> Option<PathBuf> {
    let home = env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin"));
    let path = env::var_os("PATH").unwrap_or_default();
    home.into_iter()
        .chain(env::split_paths(&path))
        .map(|dir| dir.join("nvcc"))
        .find(|p| p.is_file())
}

fn build_ptx(nvcc: &Path, out: &Path) -> Result<(), String> {
    let output = std::process::Command::new(nvcc)
        .args(["--ptx", "-arch=compute_90", "-o"])
        .arg(out.join("tag.ptx"))
        .arg("kernels/tag.cu")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn build_standin(out: &Path) -> Result<(), String> {
    let compiler = cc::Build::new()
        .try_get_compiler()
        .map_err(|e| format!("no C compiler: {e}"))?;
    for lib in &LIBS {
        let mut cmd = compiler.to_command();
        cmd.args(["-shared", "-fPIC", "-O2", "-Wall", "-fvisibility=hidden"])
            .arg(format!("-Wl,-soname,{}", lib.name))
            .arg("-o")
            .arg(out.join(lib.name))
            .arg(Path::new("ffi/standin").join(lib.source))
            .arg(format!("-L{}", out.display()))
            .arg("-Wl,-rpath,$ORIGIN")
            .args(lib.link);
        let output = cmd
            .output()
            .map_err(|e| format!("cannot run {:?}: {e}", compiler.path()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed:\n{}",
                lib.name,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}
