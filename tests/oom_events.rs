//! Out-of-memory events of a snapshot, judged: snapshots that ran out of memory are recorded
//! here from a real trace (a replay of the shipped GPT-2 trace with its capacity set below and
//! just above what it needs), then replayed through the CLI, whose verdicts, shortfalls and
//! capacity must follow.

use std::path::{Path, PathBuf};
use std::process::Command;

use cudalloc::replay::{ReplayOptions, replay_device};
use cudalloc::trace::read_trace;

const MIB: u64 = 1 << 20;

/// Replay the GPT-2 trace on `capacity` bytes with history on; the snapshot it leaves.
fn oom_snapshot(capacity: u64, name: &str) -> (PathBuf, u64) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t = read_trace(&root.join("traces/cpu_gpt2_train.csv"), None).unwrap();
    let opts = ReplayOptions {
        // PyTorch's fixed segments: the snapshots stand for PyTorch runs.
        config: Some(cudalloc::Config::fixed_segments()),
        capacity: Some(capacity),
        record_history: true,
        ..ReplayOptions::default()
    };
    let r = replay_device(&t, &t.devices[0], &opts, |_| {}).unwrap();
    assert!(r.ooms > 0, "the recording run must run out of memory");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oom-events");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, r.snapshot.unwrap()).unwrap();
    (p, r.ooms)
}

fn replay_json(p: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args(["replay", "--json"])
        .args(extra)
        .arg(p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.lines().next().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

/// Every event's verdict follows from its own figures.
fn check_verdicts(events: &[serde_json::Value]) {
    for e in events {
        let need = e["live"].as_u64().unwrap() + e["request"].as_u64().unwrap();
        let had = e["device_free"].as_u64().unwrap() + e["pytorch_reserved"].as_u64().unwrap();
        if need > had {
            assert_eq!(e["verdict"], "shortage", "{e}");
            assert_eq!(e["short_by_bytes"].as_u64(), Some(need - had), "{e}");
        } else {
            assert_eq!(e["verdict"], "fragmentation", "{e}");
            assert!(e["short_by_bytes"].is_null(), "{e}");
        }
    }
}

#[test]
fn a_device_too_small_for_the_live_tensors_is_a_shortage() {
    // Just below GPT-2's 187.9 MiB of live bytes at its peak.
    let (p, ooms) = oom_snapshot(180 * MIB, "shortage.pickle");
    let (code, v) = replay_json(&p, &[]);
    let events = v["oom_events"].as_array().unwrap();
    assert_eq!(events.len() as u64, ooms);
    check_verdicts(events);
    assert!(
        events.iter().any(|e| e["verdict"] == "shortage"),
        "{events:?}"
    );
    // The capacity comes from the trace: what the oom events show PyTorch could have had.
    assert_eq!(v["capacity"].as_u64(), Some(180 * MIB), "{v}");
    // The trace's own failures are judged, not replayed: the replay serves what PyTorch did.
    assert_eq!(code, Some(0));
    assert_eq!(v["ooms"], 0);
}

#[test]
fn enough_memory_in_pieces_is_fragmentation_and_expandable_segments_serve_it() {
    // Above the 187.9 MiB live peak, below the 198 MiB the default policy reserves.
    let (p, _) = oom_snapshot(192 * MIB, "fragmentation.pickle");
    let (_, v) = replay_json(&p, &[]);
    let events = v["oom_events"].as_array().unwrap();
    assert!(!events.is_empty());
    check_verdicts(events);
    // Above the live peak, nothing is a shortage.
    assert!(
        events.iter().all(|e| e["verdict"] == "fragmentation"),
        "{events:?}"
    );
    // And a setting serves it at that capacity.
    let (code, v) = replay_json(&p, &["--conf", "expandable_segments:True"]);
    assert_eq!(v["ooms"], 0, "{v}");
    assert_eq!(code, Some(0));
}

#[test]
fn the_text_prints_a_verdict_line_per_oom_event() {
    let (p, ooms) = oom_snapshot(180 * MIB, "shortage-text.pickle");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .arg("replay")
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("verdict: ").count() as u64, ooms, "{text}");
    assert!(text.contains("verdict: shortage"), "{text}");
    assert!(text.contains("cut at least"), "{text}");
}
