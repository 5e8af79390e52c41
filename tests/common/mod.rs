//! Shared test support: the fake `libcuda.so.1` and running a test body in a child process
//! whose dynamic loader finds it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build the fake driver (once per test binary) into a folder holding `libcuda.so.1` and
/// `libcuda.so`; returns the folder. Panics with the compiler's output if it fails.
pub fn fake_cuda_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = root.join("tests/fixtures/fake_cuda.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "fake_cuda_{}_{}",
            std::process::id(),
            module_path!().replace("::", "_")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libcuda.so.1");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = Command::new(&cc)
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-lpthread")
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C compiler '{cc}': {e}"));
        assert!(
            out.status.success(),
            "building the fake libcuda failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let link = dir.join("libcuda.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("libcuda.so.1", &link).unwrap();
        dir
    })
    .clone()
}

/// Run the test named `name` of the current test binary in a child process with the fake
/// driver on `LD_LIBRARY_PATH` and `env` set; panics with its output if it fails.
pub fn run_child_with_fake_cuda(name: &str, env: &[(&str, &str)]) -> String {
    let dir = fake_cuda_dir();
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
    .env("CUDALLOC_FAKE_CUDA_CHILD", "1");
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

/// Inside a child started by [`run_child_with_fake_cuda`]; a child body calls this first.
pub fn assert_in_child() {
    assert!(
        std::env::var_os("CUDALLOC_FAKE_CUDA_CHILD").is_some(),
        "this test runs in a child process started by its parent test (with the fake \
         libcuda on LD_LIBRARY_PATH); run the parent instead"
    );
}

/// Calls of one driver entry point so far, read from the loaded fake driver.
pub fn fake_count(name: &str) -> i64 {
    type CountFn = unsafe extern "C" fn(*const std::ffi::c_char) -> i64;
    // SAFETY: dlopen of the already-loaded fake (RTLD_NOLOAD: never loads anything new).
    let h = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    assert!(!h.is_null(), "the fake libcuda is not loaded");
    // SAFETY: looking up an exported symbol of a loaded library.
    let f = unsafe { libc::dlsym(h, c"fake_cuda_count".as_ptr()) };
    assert!(!f.is_null(), "libcuda is not the fake");
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `fake_cuda_count` has exactly this signature in tests/fixtures/fake_cuda.c.
    let n = unsafe { std::mem::transmute::<*mut libc::c_void, CountFn>(f)(name.as_ptr()) };
    // SAFETY: balances the dlopen above.
    unsafe { libc::dlclose(h) };
    n
}
