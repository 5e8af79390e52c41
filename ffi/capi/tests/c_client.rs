//! Builds the C client (ffi/tests/c/client.c) against libcudalloc.so and libcudalloc.a and
//! runs it on the simulated backend.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target profile folder holding the C library, built (or rebuilt) now.
pub fn built_library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "cudalloc-capi"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().unwrap();
    assert!(st.success(), "building the C library failed");
    assert!(profile_dir.join("libcudalloc.so").exists());
    profile_dir
}

fn compile(out: &Path, lib_dir: &Path, static_link: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(root.join("ffi/tests/c/client.c"))
        .arg("-I")
        .arg(root.join("ffi/include"));
    if static_link {
        cmd.arg(lib_dir.join("libcudalloc.a"))
            .args(["-lpthread", "-ldl", "-lm", "-lgcc_s"]);
    } else {
        cmd.arg("-L")
            .arg(lib_dir)
            .arg("-lcudalloc")
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .arg("-lpthread");
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "compiling the C client failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run(exe: &Path) {
    let snap = exe.with_extension("pickle");
    let o = Command::new(exe)
        .env("CUDALLOC_BACKEND", "sim")
        .env("CUDALLOC_SIM_CAPACITY", "256MiB")
        .env_remove("CUDALLOC_CONF")
        .env("SNAPSHOT_PATH", &snap)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "C client failed:\n{out}");
    assert!(out.contains("all checks passed"), "{out}");
    let bytes = std::fs::read(&snap).unwrap();
    assert_eq!(bytes.first(), Some(&0x80), "the snapshot is a pickle");
}

#[test]
fn c_client_against_shared_and_static_library() {
    let lib = built_library_dir();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-client");
    std::fs::create_dir_all(&dir).unwrap();
    let shared = dir.join("client-shared");
    compile(&shared, &lib, false);
    run(&shared);
    let stat = dir.join("client-static");
    compile(&stat, &lib, true);
    run(&stat);
}

#[test]
fn library_exports_the_header_and_nothing_else() {
    let lib = built_library_dir().join("libcudalloc.so");
    let o = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output();
    let Ok(o) = o else {
        eprintln!("nm not found: skipping the export check");
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let mut exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    exported.sort_unstable();
    let header = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/cudalloc.h"),
    )
    .unwrap();
    let mut declared: Vec<&str> = header
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("cudalloc_") && header.contains(&format!("{w}(")))
        .collect();
    declared.sort_unstable();
    declared.dedup();
    assert_eq!(exported, declared);
}

#[test]
fn python_module_against_the_sim_backend() {
    let lib = built_library_dir().join("libcudalloc.so");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = match Command::new("python3")
        .args(["-m", "unittest", "discover", "-s"])
        .arg(root.join("ffi/python/tests"))
        .arg("-v")
        .env("CUDALLOC_BACKEND", "sim")
        .env("CUDALLOC_SIM_CAPACITY", "1GiB")
        .env("CUDALLOC_LIBRARY", &lib)
        .env_remove("CUDALLOC_CONF")
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: python3 not available ({e})");
            return;
        }
    };
    let out = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "python tests failed:\n{out}");
    assert!(out.contains("OK"), "{out}");
    eprintln!("{out}");
}
