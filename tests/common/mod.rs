//! Shared test support: the fake `libcuda.so.1` and running a test body in a child process
//! whose dynamic loader finds it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Write the stand-in CUDA (`ffi/standin/`, built by the build script) into a folder of this
/// test binary holding `libcuda.so.1`, `libcuda.so`, `libcudart.so.13` and `libnvidia-ml.so.1`;
/// returns the folder. Panics if this build carries no stand-in (no C compiler).
pub fn standin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "standin_{}_{}",
            std::process::id(),
            module_path!().replace("::", "_")
        ));
        cudalloc::standin::Standin::install(&dir)
            .unwrap_or_else(|e| panic!("cannot write the stand-in CUDA: {e}"))
            .dir()
            .to_path_buf()
    })
    .clone()
}

/// Run the test named `name` of the current test binary in a child process with the fake
/// driver on `LD_LIBRARY_PATH` and `env` set; panics with its output if it fails.
pub fn run_child_with_standin(name: &str, env: &[(&str, &str)]) -> String {
    let dir = standin_dir();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("LD_LIBRARY_PATH", &dir)
    .env("CUDALLOC_STANDIN_CHILD", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child test {name} failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "child test {name} did not run:\n{text}"
    );
    text
}

/// Inside a child started by [`run_child_with_standin`]; a child body calls this first.
pub fn assert_in_child() {
    assert!(
        std::env::var_os("CUDALLOC_STANDIN_CHILD").is_some(),
        "this test runs in a child process started by its parent test (with the fake \
         libcuda on LD_LIBRARY_PATH); run the parent instead"
    );
}

/// Calls of one driver entry point so far, read from the loaded stand-in driver.
pub fn standin_count(name: &str) -> i64 {
    type CountFn = unsafe extern "C" fn(*const std::ffi::c_char) -> i64;
    // SAFETY: dlopen of the already-loaded fake (RTLD_NOLOAD: never loads anything new).
    let h = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    assert!(!h.is_null(), "the stand-in libcuda is not loaded");
    // SAFETY: looking up an exported symbol of a loaded library.
    let f = unsafe { libc::dlsym(h, c"standin_count".as_ptr()) };
    assert!(!f.is_null(), "libcuda is not the stand-in");
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `standin_count` has exactly this signature in ffi/standin/cuda.c.
    let n = unsafe { std::mem::transmute::<*mut libc::c_void, CountFn>(f)(name.as_ptr()) };
    // SAFETY: balances the dlopen above.
    unsafe { libc::dlclose(h) };
    n
}
