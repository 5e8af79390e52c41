//! Every kernel of `kernels/` compiled by the real NVIDIA runtime compiler (NVRTC, loaded at
//! run time through cudarc) for the H200 (`compute_90`), and the PTX checked to define each
//! kernel by name. A CPU test: nothing is launched.
//!
//! NVRTC comes from `CUDALLOC_NVRTC` (a `libnvrtc.so.*` path), else from the `nvidia-*` wheels
//! beside the project's Python (`CUDALLOC_PYTHON`, else `.venv/bin/python`: the torch CUDA
//! wheel pulls in `nvidia-cuda-nvrtc`). cudarc looks for `libnvrtc.so` (and CUDA 12's names),
//! so the body runs in a child whose `LD_LIBRARY_PATH` holds a `libnvrtc.so` link to it.
//! Without NVRTC the test is skipped with one visible line, except in CI (`CI=true`), where
//! `.ci/run` installs torch and a missing NVRTC is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use cudalloc::kernels::SOURCES;
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

const CHILD: &str = "CUDALLOC_NVRTC_CHILD";

/// The NVRTC library to use, or why there is none.
fn find_nvrtc() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CUDALLOC_NVRTC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("CUDALLOC_NVRTC={} is not a file", p.display()))
        };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = cudalloc::reference::project_python(root);
    let out = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.to_string_lossy()))?;
    let site = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let nvidia = site.join("nvidia");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|pkg| {
            std::fs::read_dir(pkg.path().join("lib"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|f| f.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc.so."))
        })
        .collect();
    // The newest CUDA's first (cu13 before cu12).
    found.sort();
    found
        .pop()
        .ok_or_else(|| format!("no libnvrtc.so.* under {}", nvidia.display()))
}

#[test]
fn kernels_compile_with_nvrtc_for_h200() {
    let nvrtc = match find_nvrtc() {
        Ok(p) => p,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must compile the kernels with NVRTC, but {why}; .ci/run installs torch")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED NVRTC test: {why} (scripts/install-torch.sh, or set CUDALLOC_NVRTC)"
            );
            return;
        }
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nvrtc_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("libnvrtc.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&nvrtc, &link).unwrap();
    // NVRTC dlopens its builtins library from its own folder's neighbours by soname.
    let lib_dir = nvrtc.parent().unwrap();
    let path = std::env::join_paths([dir.as_path(), lib_dir]).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_compile", "--exact", "--ignored", "--nocapture"])
        .env("LD_LIBRARY_PATH", path)
        .env(CHILD, &nvrtc)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "NVRTC child failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "NVRTC child did not run:\n{text}"
    );
    eprintln!("kernels compiled with {}", nvrtc.display());
}

#[test]
#[ignore = "runs in a child process started by kernels_compile_with_nvrtc_for_h200"]
fn child_compile() {
    assert!(
        std::env::var_os(CHILD).is_some(),
        "run kernels_compile_with_nvrtc_for_h200 instead"
    );
    let opts = || CompileOptions {
        arch: Some("compute_90"),
        ..Default::default()
    };
    for s in SOURCES {
        let ptx = compile_ptx_with_opts(s.text, opts())
            .unwrap_or_else(|e| panic!("NVRTC rejected kernels/{}: {e:?}", s.file))
            .to_src();
        assert!(
            ptx.contains(".target sm_90"),
            "{}: not for sm_90:\n{ptx}",
            s.file
        );
        for k in s.kernels {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "{}: the PTX has no kernel {k}:\n{ptx}",
                s.file
            );
        }
    }
    // A broken source is reported, not compiled: the compiler really ran on the text.
    let bad = compile_ptx_with_opts(
        "extern \"C\" __global__ void k(int *p) { *p = undeclared; }",
        opts(),
    );
    assert!(bad.is_err(), "NVRTC accepted an undeclared name");
}
