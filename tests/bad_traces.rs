//! Regression inputs from the mutation campaign (`tests/fixtures/bad-traces/`, written by
//! `scripts/make_bad_traces.py`): each once crashed `cudalloc replay`, ran away, or printed
//! an impossible figure. Each must now give one short error line naming the file (and the
//! byte, line or event) and exit 1 — or, for the history gap, replay with a note and
//! possible figures.

use std::path::{Path, PathBuf};
use std::process::Command;

use cudalloc::replay::{ReplayOptions, replay_device};
use cudalloc::trace::{Block, DeviceTrace, Trace, TraceFormat, validate};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bad-traces")
        .join(name)
}

/// Replay `name`; return (exit code, stdout, stderr). Panics on a signal.
fn replay(name: &str, extra: &[&str]) -> (i32, String, String) {
    let path = fixture(name);
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .arg("replay")
        .arg(&path)
        .args(extra)
        .output()
        .unwrap();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("{name}: killed by a signal ({:?})", out.status));
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The input is refused with one short line naming the file and containing `want`.
fn refused(name: &str, want: &str) {
    let (code, _, err) = replay(name, &[]);
    assert_eq!(code, 1, "{name}: {err}");
    let path = fixture(name).display().to_string();
    assert_eq!(err.lines().count(), 1, "{name}: one line expected: {err}");
    assert!(
        err.starts_with(&format!("cudalloc: {path}: ")),
        "{name}: {err}"
    );
    assert!(err.contains(want), "{name}: {err} should say {want}");
    assert!(err.len() < 400, "{name}: {} bytes of error", err.len());
}

#[test]
fn text_opcodes_at_end_of_file() {
    for f in [
        "int-at-eof.pickle",
        "long-at-eof.pickle",
        "float-at-eof.pickle",
    ] {
        refused(f, "truncated at byte 3");
    }
}

#[test]
fn memo_indices_that_wrap_or_are_huge() {
    refused(
        "put-wraps.pickle",
        "memo index 18446744073709551615 too large at byte 3",
    );
    refused(
        "put-huge.pickle",
        "memo index 4294967295 too large at byte 3",
    );
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    refused("nested-deep.pickle", "not a memory snapshot");
}

#[test]
fn memo_references_cannot_multiply_the_work() {
    refused(
        "memo-device-traces.pickle",
        "more entries than its size allows",
    );
    refused("memo-segments.pickle", "a second segment at 0x100000");
}

#[test]
fn sizes_are_checked() {
    refused(
        "segment-negative.pickle",
        "'total_size' is negative (-2097152)",
    );
    refused(
        "alloc-size-negative.pickle",
        "event 0: 'size' is negative (-1)",
    );
    refused(
        "alloc-size-string.pickle",
        "event 0: 'size' is not an integer",
    );
}

#[test]
fn settings_are_checked_as_conf_checks_them() {
    refused(
        "max-split-1.pickle",
        "max_split_size = 1 is not a positive whole number",
    );
}

#[test]
fn csv_errors_stay_short_and_memory_stays_bounded() {
    refused(
        "unbalanced-quote.csv",
        "line 2: a quoted field runs across lines",
    );
    refused(
        "quote-in-op-column.csv",
        "line 3: a quoted field runs across lines",
    );
    refused("nul-filled.csv", "line 1 is longer than 1048576 bytes");
}

#[test]
fn an_address_live_twice_at_the_start_replays_with_possible_figures() {
    // Freed without an alloc (live at the start), then active at the end: a gap.
    let (code, out, err) = replay("live-twice.pickle", &["--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("gap of the history"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["peak_allocated"], 1 << 20, "{v}");
    assert_eq!(v["pytorch_peak_reserved"], 2 << 20, "{v}");
}

#[test]
fn duplicate_live_blocks_are_refused_before_the_replay() {
    let block = Block {
        addr: 0x1000,
        size: 1 << 20,
        stream: 0,
    };
    let big = Block {
        size: 1 << 40, // does not fit: the allocation fails in the replay
        ..block
    };
    let dev = DeviceTrace {
        initial_live: vec![block, big],
        ..DeviceTrace::default()
    };
    let e = validate("t", &dev).unwrap_err();
    assert!(e.to_string().contains("live twice at the start"), "{e}");
    // Replayed anyway (bypassing the reader), the replay fails loudly instead of letting
    // the live counter underflow.
    let trace = Trace {
        path: "t".into(),
        format: TraceFormat::PytorchSnapshot,
        devices: vec![dev.clone()],
    };
    let opts = ReplayOptions {
        capacity: Some(1 << 30),
        ..ReplayOptions::default()
    };
    match replay_device(&trace, &dev, &opts, |_| {}) {
        Err(e) => assert!(e.to_string().contains("allocated while live"), "{e}"),
        Ok(r) => panic!("replayed: peak live {}", r.peak_allocated),
    }
}
