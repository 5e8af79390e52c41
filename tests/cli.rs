//! The command line's own edges: units on --capacity, the exit status of a replay that ran out
//! of memory, --suggest's answer, a closed pipe, --device with no events, --plot formats and
//! unwritable paths.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn trace(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn capacity_needs_a_unit() {
    let t = trace("cpu_bert_train.csv");
    let o = run(&["replay", "--capacity", "200", t.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no unit"), "{}", text(&o).1);
    assert!(
        run(&["replay", "--capacity", "200GiB", t.to_str().unwrap()])
            .status
            .success()
    );
}

#[test]
fn a_replay_that_runs_out_of_memory_says_so_first_and_exits_2() {
    let t = trace("cpu_gpt2_train.csv");
    let o = run(&["replay", "--capacity", "120MiB", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let (out, _) = text(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].contains("OUT OF MEMORY"), "{out}");
    assert!(!out.contains("+-"), "{out}");
    // The same trace with room: exit 0.
    let o = run(&["replay", "--capacity", "1GiB", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!text(&o).0.contains("OUT OF MEMORY"));
}

#[test]
fn suggest_ranks_ooms_first_marks_the_trace_setting_and_prints_the_line_to_paste() {
    let t = trace("cpu_gpt2_train.csv");
    let o = run(&["replay", "--suggest", t.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let (out, _) = text(&o);
    assert_eq!(out.matches("(the trace's setting)").count(), 1, "{out}");
    assert!(out.contains("CUDALLOC_CONF="), "{out}");
    assert!(out.contains("PYTORCH_CUDA_ALLOC_CONF="), "{out}");
    // On a device too small for some settings, those that fail rank last.
    let o = run(&[
        "replay",
        "--suggest",
        "--capacity",
        "200MiB",
        t.to_str().unwrap(),
    ]);
    let (out, _) = text(&o);
    let ranked: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("settings ranked"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(ranked.len(), 6, "{out}");
    let first_oom = ranked.iter().position(|l| l.contains("OOMs:"));
    if let Some(i) = first_oom {
        assert!(ranked[i..].iter().all(|l| l.contains("OOMs:")), "{out}");
    }
}

#[test]
fn a_closed_pipe_is_not_a_panic() {
    let t = trace("cpu_bert_train.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args([
            "replay",
            "--json",
            "--conf",
            "",
            "--conf",
            "max_split_size_mb:128",
        ])
        .args([t.to_str().unwrap(); 40])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with('{'));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn device_without_events_lists_those_with() {
    let t = trace("cpu_bert_train.csv");
    let o = run(&["replay", "--device", "1", t.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(err.contains("devices with events: 0"), "{err}");
}

#[test]
fn plots_by_extension_and_paths_named_in_errors() {
    let t = trace("cpu_bert_train.csv");
    let png = tmp("mem.png");
    let o = run(&[
        "replay",
        "--plot",
        png.to_str().unwrap(),
        t.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let o = run(&["replay", "--plot", "/tmp/x.jpg", t.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("unknown image type"), "{}", text(&o).1);
    let o = run(&[
        "replay",
        "--plot",
        "/nonexistent/dir/m.svg",
        t.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("/nonexistent/dir/m.svg"),
        "{}",
        text(&o).1
    );
    let o = run(&[
        "replay",
        "--dump-snapshot",
        "/nonexistent/dir/s.pickle",
        t.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("/nonexistent/dir/s.pickle"),
        "{}",
        text(&o).1
    );
    // Several settings: the setting in the later file names.
    let svg = tmp("cmp.svg");
    let o = run(&[
        "replay",
        "--plot",
        svg.to_str().unwrap(),
        "--conf",
        "",
        "--conf",
        "expandable_segments:False",
        t.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(tmp("cmp-2-expandable_segments_False.svg").exists());
    let first = std::fs::read_to_string(&svg).unwrap();
    assert!(first.contains("[defaults]"), "the setting is in the title");
}

#[test]
fn the_plotted_series_keeps_the_peaks() {
    use cudalloc::replay::{ReplayOptions, replay_device};
    for name in [
        "cpu_bert_train.csv",
        "cpu_gpt2_train.csv",
        "cpu_resnet18_train.csv",
    ] {
        let t = cudalloc::trace::read_trace(&trace(name), None).unwrap();
        let opts = ReplayOptions {
            series_points: 50,
            ..ReplayOptions::default()
        };
        let r = replay_device(&t, &t.devices[0], &opts, |_| {}).unwrap();
        assert!(
            r.series.len() <= 2 * 51 + 2,
            "{name}: {} points",
            r.series.len()
        );
        let live = r.series.iter().map(|p| p.live).max().unwrap();
        let reserved = r.series.iter().map(|p| p.reserved).max().unwrap();
        assert_eq!(
            live, r.peak_allocated,
            "{name}: the live peak is in the series"
        );
        assert_eq!(
            reserved, r.peak_reserved,
            "{name}: the reserved peak is in the series"
        );
    }
}

#[test]
fn a_header_only_csv_and_an_empty_snapshot_behave_the_same() {
    let csv = tmp("header-only.csv");
    std::fs::write(&csv, "action,ptr,size,stream\n").unwrap();
    // An empty snapshot pickle: {'segments': [], 'device_traces': []}, protocol 2.
    let snap = tmp("empty.pickle");
    std::fs::write(
        &snap,
        b"\x80\x02}q\x00(X\x08\x00\x00\x00segmentsq\x01]q\x02X\r\x00\x00\x00device_tracesq\x03]q\x04u.",
    )
    .unwrap();
    for p in [&csv, &snap] {
        let o = run(&["replay", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{p:?}");
        assert!(text(&o).1.contains("no events"), "{p:?}: {}", text(&o).1);
    }
}

/// `--min-capacity` answers a threshold: the trace completes at that capacity and runs out of
/// memory one step below it (checked here with plain replays at both), and the JSON carries
/// the same figure.
#[test]
fn min_capacity_is_a_threshold_between_a_failing_and_a_completing_replay() {
    let t = trace("cpu_gpt2_train.csv");
    let t = t.to_str().unwrap();
    let o = run(&["replay", "--cold-start", "--min-capacity", "--json", t]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
    let fit = &v["min_capacity"];
    let cap = fit["cudalloc"].as_u64().expect("a capacity was found");
    assert_eq!(
        fit["pytorch"],
        serde_json::Value::Null,
        "no reference was run"
    );
    let step = fit["step"].as_u64().unwrap();
    assert_eq!(cap % step, 0);
    assert!(cap >= v["peak_allocated"].as_u64().unwrap());
    assert!(cap <= v["peak_reserved"].as_u64().unwrap().div_ceil(step) * step);
    let ooms_at = |c: u64| -> u64 {
        let o = run(&[
            "replay",
            "--cold-start",
            "--json",
            "--capacity",
            &format!("{}MiB", c >> 20),
            t,
        ]);
        let v: serde_json::Value = serde_json::from_str(text(&o).0.trim()).unwrap();
        v["ooms"].as_u64().unwrap()
    };
    assert_eq!(ooms_at(cap), 0);
    assert!(ooms_at(cap - step) > 0);
    let o = run(&["replay", "--cold-start", "--min-capacity", t]);
    let out = text(&o).0;
    assert!(
        out.contains(&format!(
            "smallest capacity without OOM (2 MiB steps, {} replays): cudalloc {} MiB",
            fit["probes"],
            cap >> 20
        )),
        "{out}"
    );
}
