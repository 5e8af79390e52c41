//! Real PyTorch on the stand-in CUDA: runs the Python suite `tests/pytorch/` with the torch
//! CUDA wheel (the interpreter `CUDALLOC_PYTHON`, else `.venv/bin/python`, else `python3`).
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

fn preload_shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "cudalloc-preload"])
        .current_dir(root());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().unwrap().success(),
        "building the preload shim failed"
    );
    profile.join("libcudalloc_preload.so")
}

#[test]
fn real_pytorch_suite() {
    let python = match python_with_torch() {
        Ok(p) => p,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must run the real-PyTorch tests, but {why}; .ci/run installs torch")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED real-PyTorch tests: {why} (python3 -m venv .venv && .venv/bin/pip \
                 install torch==2.15.0, or set CUDALLOC_PYTHON)"
            );
            return;
        }
    };
    let standin = cudalloc::standin::Standin::install(&common::standin_dir()).unwrap();
    let capacity = (8u64 << 30).to_string();
    let out = Command::new(&python)
        .args(["-W", "ignore", "-m", "unittest", "-v"])
        .arg(root().join("tests/pytorch/test_real_pytorch.py"))
        .current_dir(root())
        .env("LD_PRELOAD", standin.preload())
        .env("CUDALLOC_STANDIN_PRELOAD", standin.preload())
        .env("CUDALLOC_STANDIN_CAPACITY", &capacity)
        .env("CUDALLOC_BIN", env!("CARGO_BIN_EXE_cudalloc"))
        .env("CUDALLOC_PRELOAD_SHIM", preload_shim())
        .env("CUDALLOC_ROOT", root())
        .env_remove("PYTORCH_CUDA_ALLOC_CONF")
        .env_remove("CUDALLOC_CONF")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "real-PyTorch tests failed:\n{text}");
    assert!(text.contains("\nOK"), "the suite did not run:\n{text}");
}
