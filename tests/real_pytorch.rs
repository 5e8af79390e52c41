//! Real PyTorch on the stand-in CUDA: runs the Python suites of `tests/pytorch/`
//! (`test_real_pytorch.py`: torch's own allocator, the reference replay and the preload shim;
//! `test_plugin.py`: cudalloc installed as PyTorch's allocator) with the torch CUDA wheel
//! (the interpreter `CUDALLOC_PYTHON`, else `.venv/bin/python`, else `python3`).
//!
//! Without torch the suite is skipped with one visible line, except in CI (`CI=true`), where
//! a missing torch is a failure: `.ci/run` installs it, so the suite cannot silently stop
//! running there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter with torch, if there is one; why not, otherwise.
fn python_with_torch() -> Result<PathBuf, String> {
    let python = PathBuf::from(cudalloc::reference::project_python(root()));
    let out = Command::new(&python)
        .args([
            "-c",
            "import torch; assert torch.version.cuda, 'a CPU-only torch'",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        Ok(python)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{} has no CUDA torch ({})",
            python.display(),
            err.lines().last().unwrap_or("")
        ))
    }
}

/// Build `package` in this test's profile and return the path of its library `file`.
fn built_library(package: &str, file: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", package]).current_dir(root());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "building {package} failed");
    profile.join(file)
}

/// Run the unittest file `suite` of tests/pytorch/ with real PyTorch on the stand-in.
fn run_suite(suite: &str) {
    let python = match python_with_torch() {
        Ok(p) => p,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must run the real-PyTorch tests, but {why}; .ci/run installs torch")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED real-PyTorch tests ({suite}): {why} (python3 -m venv .venv && \
                 .venv/bin/pip install torch==2.15.0, or set CUDALLOC_PYTHON)"
            );
            return;
        }
    };
    let standin = cudalloc::standin::Standin::install(&common::standin_dir()).unwrap();
    let capacity = (8u64 << 30).to_string();
    let glue_cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("torch-glue");
    let out = Command::new(&python)
        .args(["-W", "ignore", "-m", "unittest", "-v"])
        .arg(root().join("tests/pytorch").join(suite))
        .current_dir(root())
        .env("LD_PRELOAD", standin.preload())
        .env("CUDALLOC_STANDIN_PRELOAD", standin.preload())
        .env("CUDALLOC_STANDIN_CAPACITY", &capacity)
        .env("CUDALLOC_BIN", env!("CARGO_BIN_EXE_cudalloc"))
        .env(
            "CUDALLOC_PRELOAD_SHIM",
            built_library("cudalloc-preload", "libcudalloc_preload.so"),
        )
        .env(
            "CUDALLOC_LIBRARY",
            built_library("cudalloc-capi", "libcudalloc.so"),
        )
        .env("CUDALLOC_CACHE_DIR", glue_cache)
        .env("CUDALLOC_ROOT", root())
        .env_remove("PYTORCH_CUDA_ALLOC_CONF")
        .env_remove("CUDALLOC_CONF")
        .env_remove("CUDALLOC_BACKEND")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "real-PyTorch tests ({suite}) failed:\n{text}"
    );
    assert!(
        text.contains("\nOK"),
        "the suite {suite} did not run:\n{text}"
    );
}

#[test]
fn real_pytorch_suite() {
    run_suite("test_real_pytorch.py");
}

/// cudalloc installed in PyTorch (`cudalloc.install_pytorch()`), on both backends.
#[test]
fn plugin_suite() {
    run_suite("test_plugin.py");
}
