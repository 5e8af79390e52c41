//! Mutation fuzzing of `cudalloc replay`: the shipped CSV traces, a snapshot cudalloc writes,
//! and the shared PyTorch snapshots (`../shared/traces`, when present), mutated with a fixed
//! seed (bit flips, interesting bytes and integers, truncations, deleted and repeated
//! chunks, splices) and replayed by the CLI in a child under a 4 GiB address-space limit
//! (`ulimit -v`) and a time limit. Every case must exit 0 with possible figures, or exit 1
//! with short `cudalloc: FILE: ...` lines — never a signal, a panic, an abort or a runaway.
//!
//! `CUDALLOC_FUZZ_CASES` (default 2000) sets the number of cases; failing inputs are kept in
//! `target/mutation-failures/` to replay by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cudalloc::backend::SimBackend;
use cudalloc::{CachingAllocator, Config};
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};

/// Per-case time limit (a debug build replays the largest shared snapshot in a few seconds).
const CASE_LIMIT: Duration = Duration::from_secs(60);
/// The figure no replay may exceed: the simulated capacity the cases run with.
const CAPACITY: u64 = 64 << 30;
/// A trace's sizes are capped at 2^48 bytes (`cudalloc::trace::MAX_BYTES`).
const MAX_BYTES: u64 = 1 << 48;

struct Seed {
    name: String,
    data: Vec<u8>,
    /// Share of the cases: small seeds get many, the large shared snapshots a few.
    weight: usize,
}

fn seeds() -> Vec<Seed> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    // The shipped CSVs, cut to their first 300 lines (a valid trace, fast to replay).
    for f in [
        "cpu_bert_train.csv",
        "cpu_gpt2_train.csv",
        "cpu_resnet18_train.csv",
    ] {
        let text = std::fs::read_to_string(root.join("traces").join(f)).unwrap();
        let head: String = text.lines().take(300).flat_map(|l| [l, "\n"]).collect();
        out.push(Seed {
            name: f.into(),
            data: head.into_bytes(),
            weight: 6,
        });
    }
    // A snapshot cudalloc writes, with settings and several streams.
    let cfg = Config::parse("max_split_size_mb:64,roundup_power2_divisions:[2:4,>:2]").unwrap();
    let backend = SimBackend::new(1 << 30);
    let s1 = backend.create_stream();
    let alloc = CachingAllocator::new(backend, cfg).unwrap();
    alloc.record_history(true, 10_000);
    let mut held = Vec::new();
    for i in 0..60u64 {
        let p = alloc
            .allocate_raw(0, (i % 9 + 1) * 700_000, if i % 3 == 0 { s1 } else { 0 })
            .unwrap();
        held.push(p);
        if i % 4 == 1 {
            alloc.free_raw(0, held.remove(0)).unwrap();
        }
    }
    out.push(Seed {
        name: "cudalloc.pickle".into(),
        data: alloc.snapshot_pickle().unwrap(),
        weight: 8,
    });
    for p in held {
        alloc.free_raw(0, p).unwrap();
    }
    // The shared PyTorch snapshots, when this checkout sits beside them.
    if let Ok(dir) = std::fs::read_dir(root.join("../shared/traces")) {
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for p in files {
            if p.extension().is_some_and(|e| e == "pickle") {
                let data = std::fs::read(&p).unwrap();
                let weight = if data.len() < 100_000 { 6 } else { 1 };
                out.push(Seed {
                    name: p.file_name().unwrap().to_string_lossy().into(),
                    data,
                    weight,
                });
            }
        }
    }
    out
}

const BYTES: &[u8] = b"\x00\xff\x7f\x80(.]}h)qrpaeus012\x94\x95\x8c\x8a\x8bJKMNX\n,\"-";
const TEXTS: &[&str] = &[
    "-1",
    "18446744073709551616",
    "0x",
    "NaN",
    "-2097152",
    "\"",
    ",,,,",
    "alloc",
    "free",
    "\n",
];
const INTS: &[u64] = &[
    0,
    1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
    1 << 63,
];

fn mutate_once(rng: &mut TestRng, d: &mut Vec<u8>, other: &[u8]) {
    if d.is_empty() {
        d.push(0x80);
        return;
    }
    let at = rng.random_range(0..d.len());
    match rng.random_range(0..8u32) {
        0 => {
            for _ in 0..rng.random_range(1..9) {
                let i = rng.random_range(0..d.len());
                d[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => d[at] = BYTES[rng.random_range(0..BYTES.len())],
        2 => d.truncate(at),
        3 => {
            let end = (at + rng.random_range(1..64)).min(d.len());
            d.drain(at..end);
        }
        4 => {
            let end = (at + rng.random_range(1..256)).min(d.len());
            let chunk = d[at..end].to_vec();
            for _ in 0..rng.random_range(1..4) {
                d.splice(at..at, chunk.iter().copied());
            }
        }
        5 => {
            let t = TEXTS[rng.random_range(0..TEXTS.len())];
            d.splice(at..at, t.bytes());
        }
        6 => {
            let v = INTS[rng.random_range(0..INTS.len())].to_le_bytes();
            let n = if rng.random_range(0..2) == 0 { 4 } else { 8 };
            for (k, b) in v.iter().take(n).enumerate() {
                if let Some(x) = d.get_mut(at + k) {
                    *x = *b;
                }
            }
        }
        _ => {
            // Splice a piece of another seed in.
            if !other.is_empty() {
                let s = rng.random_range(0..other.len());
                let e = (s + rng.random_range(1..512)).min(other.len());
                d.splice(at..at, other[s..e].iter().copied());
            }
        }
    }
}

/// What one case did wrong, if anything.
fn check(path: &Path, code: Option<i32>, out: &str, err: &str, took: Duration) -> Option<String> {
    let name = path.display().to_string();
    if took >= CASE_LIMIT {
        return Some(format!("ran past {CASE_LIMIT:?}"));
    }
    match code {
        None => return Some("killed by a signal".into()),
        // 0: every allocation served; 2: the replay ran out of simulated memory (the
        // documented status), which its figures must show.
        Some(c @ (0 | 2)) => {
            let mut ooms = 0;
            for line in out.lines() {
                let v: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(e) => return Some(format!("exit 0, output not JSON ({e})")),
                };
                let n = |k: &str| v[k].as_u64();
                let bad = n("peak_reserved").is_none_or(|x| x > CAPACITY)
                    || n("peak_allocated").is_none_or(|x| x > MAX_BYTES)
                    || v["pytorch_peak_reserved"]
                        .as_u64()
                        .is_some_and(|x| x > MAX_BYTES);
                if bad {
                    return Some(format!("exit {c} with impossible figures: {line}"));
                }
                ooms += v["ooms"].as_u64().unwrap_or(0);
            }
            if c == 2 && ooms == 0 {
                return Some("exit 2 (out of memory) with no OOM in the figures".into());
            }
            if c == 0 && ooms > 0 {
                return Some("exit 0 although allocations failed".into());
            }
        }
        Some(1) => {
            if err.trim().is_empty() {
                return Some("exit 1 without an error line".into());
            }
            if let Some(l) = err
                .lines()
                .find(|l| !l.starts_with(&format!("cudalloc: {name}: ")))
            {
                return Some(format!("an error line not naming the file: {l:.200}"));
            }
            if err.len() > 2000 || err.lines().count() > 8 {
                return Some(format!("{} bytes of errors", err.len()));
            }
        }
        Some(c) => return Some(format!("exit {c}: {err:.300}")),
    }
    None
}

/// Run one case: its exit code when it passed, else what it did wrong.
fn run_case(dir: &Path, k: usize, data: &[u8]) -> Result<i32, String> {
    let path = dir.join(format!("case{k}"));
    std::fs::write(&path, data).unwrap();
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_cudalloc"))
        .args(["replay", "--json", "--capacity", "64GiB"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() >= CASE_LIMIT {
            child.kill().ok();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    let verdict = check(&path, status.code(), &out, &err, took);
    std::fs::remove_file(&path).ok();
    match verdict {
        None => Ok(status.code().unwrap_or(-1)),
        Some(why) => Err(why),
    }
}

#[test]
fn mutated_traces_never_crash_the_cli() {
    let cases: usize = std::env::var("CUDALLOC_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let seeds = seeds();
    let total_weight: usize = seeds.iter().map(|s| s.weight).sum();
    // Each case: (seed index, its mutated bytes), drawn up front from one fixed seed.
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]);
    let mut inputs = Vec::with_capacity(cases);
    for _ in 0..cases {
        let mut pick = rng.random_range(0..total_weight);
        let i = seeds
            .iter()
            .position(|s| {
                if pick < s.weight {
                    true
                } else {
                    pick -= s.weight;
                    false
                }
            })
            .unwrap();
        let mut d = seeds[i].data.clone();
        let other = &seeds[rng.random_range(0..seeds.len())].data;
        for _ in 0..rng.random_range(1..4) {
            mutate_once(&mut rng, &mut d, other);
        }
        inputs.push((i, d));
    }
    let dir = tempfile::tempdir().unwrap();
    let next = AtomicUsize::new(0);
    let exits = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((i, data)) = inputs.get(k) else {
                        break;
                    };
                    match run_case(dir.path(), k, data) {
                        Ok(code) => {
                            exits[usize::from(code == 1)].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(why) => failures.lock().unwrap().push((k, *i, why)),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mutation-failures");
    for (k, i, _) in &failures {
        std::fs::create_dir_all(&keep).ok();
        std::fs::write(
            keep.join(format!("case{k}-{}", seeds[*i].name)),
            &inputs[*k].1,
        )
        .ok();
    }
    eprintln!(
        "{cases} mutated cases over {} seeds: {} replayed (exit 0 or 2), {} refused (exit 1), {} \
         failures",
        seeds.len(),
        exits[0].load(Ordering::Relaxed),
        exits[1].load(Ordering::Relaxed),
        failures.len()
    );
    let report: Vec<String> = failures
        .iter()
        .take(20)
        .map(|(k, i, why)| format!("case {k} (from {}): {why}", seeds[*i].name))
        .collect();
    assert!(failures.is_empty(), "{}", report.join("\n"));
}

#[test]
fn the_checker_catches_each_kind_of_failure() {
    let p = Path::new("/tmp/case1");
    let ok = Duration::from_millis(5);
    let good = r#"{"peak_reserved":1024,"peak_allocated":512,"pytorch_peak_reserved":null}"#;
    assert_eq!(check(p, Some(0), good, "", ok), None);
    assert_eq!(
        check(
            p,
            Some(1),
            "",
            "cudalloc: /tmp/case1: line 2: bad ptr 'x'\n",
            ok
        ),
        None
    );
    let oom =
        r#"{"peak_reserved":1024,"peak_allocated":512,"pytorch_peak_reserved":null,"ooms":3}"#;
    assert_eq!(check(p, Some(2), oom, "", ok), None);
    let impossible = r#"{"peak_reserved":1024,"peak_allocated":17592184995840000000,"pytorch_peak_reserved":null}"#;
    for (code, out, err, took) in [
        (None, "", "", ok),                            // a signal
        (Some(101), "", "thread 'main' panicked", ok), // a panic
        (Some(134), "", "memory allocation of 1 bytes failed", ok),
        (Some(0), impossible, "", ok),            // impossible figures
        (Some(1), "", "", ok),                    // no error line
        (Some(1), "", "cudalloc: bad ptr\n", ok), // the file not named
        (Some(0), good, "", CASE_LIMIT),          // a runaway
        (Some(2), good, "", ok),                  // "out of memory" with no OOM
        (Some(0), oom, "", ok),                   // OOMs hidden behind exit 0
    ] {
        assert!(check(p, code, out, err, took).is_some(), "{code:?} {err}");
    }
    let long = format!("cudalloc: /tmp/case1: bad ptr '{}'\n", "x".repeat(3000));
    assert!(check(p, Some(1), "", &long, ok).is_some());
}
