//! The reference replay without PyTorch: its operations are exactly the replay's (run
//! through cudalloc itself they give the replay's figures), and a missing interpreter or
//! torch is one clear line. With torch, `tests/real_pytorch.rs` checks the figures.

use std::path::{Path, PathBuf};
use std::process::Command;

use cudalloc::replay::{Op, ReplayOptions, replay_device, script};
use cudalloc::trace::read_trace;
use cudalloc::{CachingAllocator, Config, Error, SimBackend};
use rustc_hash::FxHashMap;

/// Run `ops` on cudalloc as another allocator would: (peak reserved, device allocations
/// after the warm start, OOMs).
fn run_script(ops: &[Op], config: Config, capacity: u64) -> (u64, u64, u64) {
    let backend = SimBackend::new(capacity).virtual_only().auto_complete();
    let alloc = CachingAllocator::new(backend, config).unwrap();
    let mut live = FxHashMap::default();
    let mut warm = Vec::new();
    let (mut ooms, mut base) = (0, 0);
    let take = |size, stream, ooms: &mut u64| match alloc.allocate_raw(0, size, stream) {
        Ok(p) => Some(p),
        Err(Error::OutOfMemory(_)) => {
            *ooms += 1;
            None
        }
        Err(e) => panic!("{e}"),
    };
    for op in ops {
        match *op {
            Op::Alloc { addr, size, stream } if size > 0 => {
                if let Some(p) = take(size, stream, &mut ooms) {
                    live.insert(addr, p);
                }
            }
            Op::Alloc { .. } => {}
            Op::Free { addr } => {
                if let Some(p) = live.remove(&addr) {
                    alloc.free_raw(0, p).unwrap();
                }
            }
            Op::EmptyCache => alloc.empty_cache(Some(0)).unwrap(),
            Op::Warm { size, stream } => warm.extend(take(size, stream, &mut ooms)),
            Op::WarmDone => {
                for p in warm.drain(..) {
                    alloc.free_raw(0, p).unwrap();
                }
                base = alloc.memory_stats(0).unwrap().num_device_alloc;
            }
        }
    }
    let s = alloc.memory_stats(0).unwrap();
    (
        s.segments.reserved_bytes[0].peak as u64,
        s.num_device_alloc - base,
        ooms,
    )
}

fn traces() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<PathBuf> = [
        "cpu_bert_train.csv",
        "cpu_gpt2_train.csv",
        "cpu_resnet18_train.csv",
    ]
    .iter()
    .map(|f| root.join("traces").join(f))
    .collect();
    let shared = root.join("../shared/traces");
    for f in [
        "JasperSolt__snapshot__6720e24.pickle",
        "cranberrii__memory_snapshot__ffe2e0c.pickle",
    ] {
        if shared.join(f).exists() {
            v.push(shared.join(f));
        } else {
            eprintln!("SKIPPED {f}: ../shared/traces is not here");
        }
    }
    v
}

#[test]
fn the_script_is_the_replay() {
    for path in traces() {
        let t = read_trace(&path, None).unwrap();
        let d = &t.devices[0];
        for (conf, cold, capacity) in [
            ("", false, None),
            ("", true, None),
            ("max_split_size_mb:128", false, None),
            ("expandable_segments:True", false, None),
            ("", false, Some(120u64 << 20)),
        ] {
            let opts = ReplayOptions {
                config: Some(Config::parse(conf).unwrap()),
                cold_start: cold,
                capacity,
                ..ReplayOptions::default()
            };
            let r = replay_device(&t, d, &opts, |_| {}).unwrap();
            let config = opts.config_for(d);
            let ops = script(d, &opts, &config);
            let got = run_script(&ops, config, opts.capacity_for(d));
            let label = format!(
                "{} [{conf}] cold {cold} capacity {capacity:?}",
                path.display()
            );
            assert_eq!(got, (r.peak_reserved, r.device_allocs, r.ooms), "{label}");
            let allocs_frees = ops
                .iter()
                .filter(|o| matches!(o, Op::Alloc { .. } | Op::Free { .. }))
                .count();
            assert_eq!(allocs_frees as u64, r.events, "{label}");
        }
    }
}

fn replay_with_python(python: &Path) -> (bool, String) {
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/cpu_bert_train.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args(["replay", "--reference", "pytorch", "--python"])
        .arg(python)
        .arg(trace)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_python_is_one_clear_line() {
    let (ok, err) = replay_with_python(Path::new("/nonexistent/python3"));
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot run /nonexistent/python3"), "{err}");
    assert!(err.contains("pip install torch==2.15.0"), "{err}");
}

#[test]
fn python_without_torch_is_one_clear_line() {
    // An interpreter that sees no site-packages, so no torch, whatever this machine has.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reference-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("python-without-site");
    std::fs::write(&wrapper, "#!/bin/sh\nexec python3 -S \"$@\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("SKIPPED: no python3 here");
        return;
    }
    let (ok, err) = replay_with_python(&wrapper);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot import torch"), "{err}");
    assert!(err.contains("pip install torch==2.15.0"), "{err}");
}

#[test]
fn the_replay_without_reference_needs_no_python() {
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/cpu_bert_train.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args(["replay", "--json"])
        .arg(trace)
        .env("PATH", "/nonexistent")
        .env("CUDALLOC_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["reference"].is_null());
}

#[test]
fn cli_standin_writes_the_libraries_and_the_preload_line() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reference-tests/standin");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .arg("standin")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let libs = ["libcudart.so.13", "libcuda.so.1", "libnvidia-ml.so.1"];
    let expect: Vec<String> = libs
        .iter()
        .map(|l| dir.join(l).display().to_string())
        .collect();
    assert_eq!(line.trim(), format!("LD_PRELOAD={}", expect.join(":")));
    for l in libs.iter().chain(&["libcuda.so"]) {
        assert!(dir.join(l).exists(), "{l}");
    }
    // The runtime's symbols are under the version node the PyTorch wheel asks for.
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(dir.join("libcudart.so.13"))
        .output();
    if let Ok(nm) = nm {
        let syms = String::from_utf8_lossy(&nm.stdout);
        for s in [
            "cudaMalloc",
            "cudaGetDriverEntryPointByVersion",
            "__cudaRegisterFatBinary",
        ] {
            assert!(
                syms.contains(&format!(" {s}@@libcudart.so.13")),
                "{s}:\n{syms}"
            );
        }
    }
}
