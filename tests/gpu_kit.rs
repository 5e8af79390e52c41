//! The GPU kit kept green on the CPU: builds the bundle (`scripts/gpu/bundle.sh --debug`, the
//! debug profile `cargo test` has built already) and runs its `run.sh --dry-run` on the
//! stand-in CUDA, so neither the script nor the bundle can rot before a GPU runs them.
//!
//! Every part must pass; the frameworks and snapshot parts may be skipped only without torch
//! and outside CI (`CI=true`: `.ci/run` installs torch). The test must not need a GPU, nvcc
//! or network.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[test]
fn bundle_builds_and_dry_run_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gpu_kit_{}", std::process::id()));
    let bundle = tmp.join("bundle");
    let out = tmp.join("out");
    let t0 = Instant::now();
    let built = Command::new(root.join("scripts/gpu/bundle.sh"))
        .arg("--debug")
        .arg(&bundle)
        .current_dir(root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&built.stdout).into_owned()
        + &String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "bundle.sh failed:\n{text}");
    assert!(
        text.contains("bundle: "),
        "bundle.sh printed no size:\n{text}"
    );
    for f in [
        "bin/cudalloc",
        "lib/libcudalloc.so",
        "lib/libcudalloc_preload.so",
        "kernels/tag.cu",
        "clients/stress",
        "clients/pairs",
        "clients/malloc_loop.cu",
        "clients/train.py",
        "python/cudalloc/__init__.py",
        "tests/stress",
        "tests/cuda_standin",
        "run.sh",
    ] {
        assert!(bundle.join(f).is_file(), "the bundle lacks {f}");
    }
    let bundled = t0.elapsed();

    let ran = Command::new(bundle.join("run.sh"))
        .arg("--dry-run")
        .env("OUT", &out)
        .env_remove("CUDALLOC_GPU_PARTS")
        .env("CUDALLOC_PYTHON", cudalloc::reference::project_python(root))
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&ran.stdout).into_owned() + &String::from_utf8_lossy(&ran.stderr);
    eprintln!(
        "bundle {:.0} s, dry run {:.0} s:\n{log}",
        bundled.as_secs_f64(),
        (t0.elapsed() - bundled).as_secs_f64()
    );
    assert!(ran.status.success(), "run.sh --dry-run failed:\n{log}");
    let summary = std::fs::read_to_string(out.join("summary.tsv")).unwrap();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    for part in ["suites", "stress", "frameworks", "timings", "snapshots"] {
        let line = summary
            .lines()
            .find(|l| l.split('\t').next() == Some(part))
            .unwrap_or_else(|| panic!("part {part} did not run:\n{summary}"));
        let status = line.split('\t').nth(1).unwrap();
        let may_skip = !ci && matches!(part, "frameworks" | "snapshots");
        assert!(
            status == "PASS" || (may_skip && status == "SKIP"),
            "part {part}: {status}\n{log}"
        );
    }
    let stress = std::fs::read_to_string(out.join("logs/stress.log")).unwrap();
    assert!(
        stress.contains("host_overlaps=0") && stress.contains("stress: PASS"),
        "{stress}"
    );
    assert!(stress.contains("allocations="), "{stress}");
    let _ = std::fs::remove_dir_all(&tmp);
}
