//! The LD_PRELOAD shim over the stand-in driver: C clients of tests/fixtures (one calling the
//! driver's symbols, one reaching it only through cuGetProcAddress), run plain and preloaded,
//! with bad configurations and with faults injected into the shim's start and process
//! handlers (`CUDALLOC_PRELOAD_FAULT`); a client that frees what it should not (twice, inside
//! a block, a block it was never given) and one that asks cuMemGetInfo_v2 from 8 threads.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn preload_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let release = profile.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "cudalloc-preload"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().unwrap().success(),
        "building the preload shim failed"
    );
    profile.join("libcudalloc_preload.so")
}

/// Compile a C client of tests/fixtures once per test process: tests run in parallel, and one
/// of them rewriting an executable while another runs it fails with "permission denied".
fn compile(name: &str, link_cuda: bool) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let out = compile_now(name, link_cuda);
    built.push((name.to_owned(), out.clone()));
    out
}

fn compile_now(name: &str, link_cuda: bool) -> PathBuf {
    let dir = common::standin_dir();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.c"));
    let out = dir.join(name);
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-O1", "-Wall", "-o"]).arg(&out).arg(&src);
    if link_cuda {
        cmd.arg("-L").arg(&dir).arg("-lcuda");
    }
    cmd.args(["-ldl", "-lpthread"]);
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "compiling {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

struct Run {
    allocs: u64,
    stderr: String,
}

/// Run a client to its end; panics with its output unless it exits 0. (stdout, stderr).
fn run_client(exe: &Path, preload: Option<&Path>, env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new(exe);
    cmd.env("LD_LIBRARY_PATH", common::standin_dir())
        .env("CUDALLOC_STANDIN_CAPACITY", "8589934592")
        .env_remove("CUDALLOC_CONF")
        .env_remove("CUDALLOC_PRELOAD_FAULT");
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "{} (preload: {preload:?}, env: {env:?}) failed ({}): {stdout}{stderr}",
        exe.display(),
        o.status
    );
    (stdout, stderr)
}

/// The number a client printed as `key=N`.
fn figure(stdout: &str, key: &str) -> i64 {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {stdout}"))
        .parse()
        .unwrap()
}

fn run(exe: &Path, preload: Option<&Path>, env: &[(&str, &str)]) -> Run {
    let (stdout, stderr) = run_client(exe, preload, env);
    Run {
        allocs: figure(&stdout, "allocs") as u64,
        stderr,
    }
}

#[test]
fn direct_driver_calls_go_through_the_cache() {
    let lib = preload_lib();
    let exe = compile("preload_direct", true);
    let plain = run(&exe, None, &[]);
    let pre = run(&exe, Some(&lib), &[("CUDALLOC_SUMMARY_AT_EXIT", "1")]);
    eprintln!(
        "direct: {} real cuMemAlloc plain, {} preloaded",
        plain.allocs, pre.allocs
    );
    assert!(plain.allocs >= 1064, "plain run: {}", plain.allocs);
    assert!(pre.allocs * 20 < plain.allocs, "preloaded: {}", pre.allocs);
    assert!(pre.stderr.contains("memory summary"), "{}", pre.stderr);
}

#[test]
fn cuda_get_proc_address_clients_go_through_the_cache() {
    let lib = preload_lib();
    let exe = compile("preload_procaddr", false);
    let plain = run(&exe, None, &[]);
    let pre = run(&exe, Some(&lib), &[]);
    eprintln!(
        "procaddr: {} real cuMemAlloc plain, {} preloaded",
        plain.allocs, pre.allocs
    );
    assert!(plain.allocs >= 1000, "plain run: {}", plain.allocs);
    assert!(pre.allocs * 20 < plain.allocs, "preloaded: {}", pre.allocs);
}

#[test]
fn bad_configuration_disables_the_cache_but_the_program_runs() {
    let lib = preload_lib();
    let exe = compile("preload_direct", true);
    let r = run(
        &exe,
        Some(&lib),
        &[("CUDALLOC_CONF", "max_split_size_mb:1")],
    );
    assert!(r.stderr.contains("max_split_size_mb"), "{}", r.stderr);
    assert!(r.allocs >= 1064, "passed through: {}", r.allocs);
}

/// The shim's lines on stderr (its own, not the stand-in's or the memory summary).
fn shim_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("cudalloc preload:"))
        .collect()
}

#[test]
fn a_panicking_start_disables_the_cache_but_the_program_runs() {
    let lib = preload_lib();
    let exe = compile("preload_direct", true);
    for fault in ["start-panic", "start-error"] {
        let r = run(&exe, Some(&lib), &[("CUDALLOC_PRELOAD_FAULT", fault)]);
        // Every call reached the driver (no thread waited for a start that never ended),
        // the forked child included, and the process said so once.
        assert!(r.allocs >= 1064, "{fault}: passed through: {}", r.allocs);
        let lines = shim_lines(&r.stderr);
        assert_eq!(lines.len(), 1, "{fault}: {}", r.stderr);
        assert!(
            lines[0].contains("disabled, passing calls to the driver") && lines[0].contains(fault),
            "{fault}: {}",
            r.stderr
        );
    }
    let r = run(
        &exe,
        Some(&lib),
        &[("CUDALLOC_PRELOAD_FAULT", "no-such-fault")],
    );
    assert!(r.allocs >= 1064, "passed through: {}", r.allocs);
    assert!(r.stderr.contains("no-such-fault"), "{}", r.stderr);
}

#[test]
fn panics_in_the_exit_and_fork_handlers_stay_in_the_shim() {
    let lib = preload_lib();
    let exe = compile("preload_direct", true);
    // The client forks a child (fork handler) and exits (exit handler); both panic. Without
    // the boundary either panic would abort the process.
    let r = run(
        &exe,
        Some(&lib),
        &[("CUDALLOC_PRELOAD_FAULT", "exit-panic,fork-panic")],
    );
    assert!(r.allocs * 20 < 1064, "the cache served: {}", r.allocs);
    let lines = shim_lines(&r.stderr);
    for handler in ["the fork handler", "the exit handler"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("internal error in {handler}"))
                    && l.contains("exit-panic") == (handler == "the exit handler")),
            "{handler}: {}",
            r.stderr
        );
    }
}

#[test]
fn bad_frees_get_the_drivers_answer_and_change_nothing() {
    let lib = preload_lib();
    let exe = compile("preload_frees", true);
    // Plain, the driver itself answers every bad free (CUDA_ERROR_INVALID_VALUE, which the
    // client checks), so the client's expectations are the driver's.
    let (plain, _) = run_client(&exe, None, &[]);
    assert!(figure(&plain, "driver_frees") >= 10, "plain run: {plain}");
    // Preloaded, the same answers come from the shim, which never hands the driver a pointer
    // inside its segments; the client then checks that every block still holds its data.
    for conf in ["", "expandable_segments:True"] {
        let (pre, stderr) = run_client(&exe, Some(&lib), &[("CUDALLOC_CONF", conf)]);
        assert_eq!(
            figure(&pre, "driver_frees"),
            0,
            "conf {conf:?}: {pre}{stderr}"
        );
        assert!(shim_lines(&stderr).is_empty(), "conf {conf:?}: {stderr}");
    }
}

#[test]
fn free_memory_never_exceeds_total_under_threads() {
    let lib = preload_lib();
    let exe = compile("preload_meminfo", true);
    // 8 threads allocate and free while asking cuMemGetInfo_v2, on devices small enough that
    // the cache keeps taking and giving back segments (the old shim reported free > total in
    // every such run).
    for capacity in ["1073741824", "2147483648"] {
        for conf in ["", "expandable_segments:True"] {
            let (out, stderr) = run_client(
                &exe,
                Some(&lib),
                &[
                    ("CUDALLOC_STANDIN_CAPACITY", capacity),
                    ("CUDALLOC_CONF", conf),
                ],
            );
            assert!(figure(&out, "calls") >= 8 * 3000, "{out}{stderr}");
            assert_eq!(
                figure(&out, "violations"),
                0,
                "capacity {capacity}, conf {conf:?}: {out}{stderr}"
            );
        }
    }
}

#[test]
fn the_shim_exports_only_its_hooks() {
    let lib = preload_lib();
    let Ok(o) = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
    else {
        eprintln!("nm not found: skipping");
        return;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "cuGetProcAddress",
            "cuGetProcAddress_v2",
            "cuMemAllocAsync",
            "cuMemAllocAsync_ptsz",
            "cuMemAlloc_v2",
            "cuMemFreeAsync",
            "cuMemFreeAsync_ptsz",
            "cuMemFree_v2",
            "cuMemGetInfo_v2",
            "cudaFree",
            "cudaFreeAsync",
            "cudaMalloc",
            "cudaMallocAsync",
            "dlsym",
        ]
    );
}
