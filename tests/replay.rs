//! Trace readers and replay: synthetic inputs, bad inputs, a snapshot round trip, the CLI,
//! and the real traces in `../shared/traces` when that folder exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use cudalloc::replay::{ReplayOptions, replay_device};
use cudalloc::trace::{EventKind, TraceFormat, parse_trace, read_trace};
use cudalloc::{CachingAllocator, Config, SimBackend};

const MIB: u64 = 1 << 20;

fn tmp(name: &str, content: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn csv_trace_reads_and_replays() {
    let csv = "seq,action,ptr,size,stream,op\n\
               0,alloc,0x1000,1048576,0,aten::empty\n\
               1,alloc,8192,3000000,0,aten::mm\n\
               2,free,0x1000,1048576,0,\n\
               3,alloc,0x1000,524288,0,x\n\
               4,free,8192,,0,\n\
               5,free,4096,524288,0,\n";
    let t = parse_trace("t.csv", csv.as_bytes()).unwrap();
    assert_eq!(t.format, TraceFormat::Csv);
    let d = &t.devices[0];
    assert_eq!(d.events.len(), 6);
    assert_eq!(d.events[4].kind, EventKind::Free);
    assert_eq!(
        d.events[4].size, 3_000_000,
        "a free takes its size from the alloc"
    );
    assert_eq!(d.peak_live_bytes(), MIB + 3_000_000);
    assert_eq!(d.pytorch_peak_reserved(), None);
    let r = replay_device(&t, d, &ReplayOptions::default(), |_| {}).unwrap();
    assert_eq!(r.events, 6);
    assert_eq!(r.ooms, 0);
    assert_eq!(r.peak_allocated, MIB + 3_000_000);
    // The defaults, expandable segments: one 2 MiB page for 1 MiB; the 3 MB request maps
    // the large pool's 20 MiB step.
    assert_eq!(r.peak_reserved, 22 * MIB);
    assert_eq!(r.device_allocs, 2);
    let exact = ReplayOptions {
        config: Some(Config::parse("expandable_segments:True").unwrap()),
        ..ReplayOptions::default()
    };
    let r = replay_device(&t, d, &exact, |_| {}).unwrap();
    // Exactly the pages needed: one for 1 MiB, two for 3 MB.
    assert_eq!(r.peak_reserved, 6 * MIB);
    assert_eq!(r.device_allocs, 2);
    let fixed = ReplayOptions {
        config: Some(Config::fixed_segments()),
        ..ReplayOptions::default()
    };
    let r = replay_device(&t, d, &fixed, |_| {}).unwrap();
    // Fixed segments: 1 MiB from a 2 MiB small segment, 3 MB from a 20 MiB large one.
    assert_eq!(r.peak_reserved, 22 * MIB);
    assert_eq!(r.device_allocs, 2);
}

#[test]
fn bad_inputs_name_file_and_line() {
    let cases: [(&str, &str); 6] = [
        (
            "action,ptr,size,stream\nalloc,0x10,100,0\nfree,0x20,100,0\n",
            "line 3",
        ),
        (
            "action,ptr,size,stream\nalloc,0x10,100,0\nalloc,0x10,100,0\n",
            "line 3",
        ),
        ("action,ptr,size,stream\nalloc,zzz,100,0\n", "line 2"),
        ("action,ptr,size,stream\nmalloc,0x10,100,0\n", "line 2"),
        ("action,ptr,size,stream\nalloc,0x10,-1,0\n", "line 2"),
        ("hello,world\n1,2\n", "line 1"),
    ];
    for (text, at) in cases {
        let e = parse_trace("bad.csv", text.as_bytes()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("bad.csv: "), "{msg}");
        assert!(msg.contains(at), "{msg} should name {at}");
    }
    let e = read_trace(Path::new("/nonexistent/trace.pickle"), None).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/trace.pickle"), "{e}");
    let e = parse_trace("x.pickle", b"\x80\x04\x95\x00").unwrap_err();
    assert!(e.to_string().contains("bad pickle"), "{e}");
    let e = parse_trace("x.pickle", b"\x80\x04K\x01.").unwrap_err();
    assert!(e.to_string().contains("not a memory snapshot"), "{e}");
    let e = parse_trace("x.bin", &[0xff, 0xfe, 0x00]).unwrap_err();
    assert!(e.to_string().contains("neither"), "{e}");
}

#[test]
fn rmm_log_reads() {
    let log = "Thread,Time,Action,Pointer,Size,Stream\n\
               140,12:00:00.1,allocate,0x7f0000000000,4096,0x0\n\
               140,12:00:00.2,allocate failure,0x0,999999999999,0x0\n\
               140,12:00:00.3,allocate,0x7f0000100000,8000000,0x0\n\
               141,12:00:00.4,free,0x7f0000000000,4096,0x0\n";
    let t = parse_trace("rmm.csv", log.as_bytes()).unwrap();
    assert_eq!(t.format, TraceFormat::RmmLog);
    assert_eq!(t.devices[0].events.len(), 3);
    assert_eq!(t.devices[0].peak_live_bytes(), 8_004_096);
    let e = parse_trace(
        "rmm.csv",
        b"Thread,Time,Action,Pointer,Size,Stream\n1,0,free,0x10,5,0x0\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn cudalloc_snapshot_round_trips_through_replay() {
    // Record a workload with history, export it as a PyTorch snapshot, read it back.
    let alloc = CachingAllocator::new(SimBackend::new(1 << 30), Config::default()).unwrap();
    alloc.record_history(true, 10_000);
    let mut keep = Vec::new();
    for i in 0..50u64 {
        let a = alloc.malloc((i % 7 + 1) * 300_000, 0).unwrap();
        if i % 3 == 0 {
            keep.push(a);
        }
    }
    let bytes = alloc.snapshot_pickle().unwrap();
    let t = parse_trace("mine.pickle", &bytes).unwrap();
    assert_eq!(t.format, TraceFormat::PytorchSnapshot);
    let d = &t.devices[0];
    let allocs = d
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Alloc)
        .count();
    assert_eq!(allocs, 50);
    let reserved = alloc.memory_stats(0).unwrap().segments.reserved_bytes[0];
    assert_eq!(
        d.pytorch_start_reserved,
        Some(0),
        "the history starts empty"
    );
    assert_eq!(d.pytorch_peak_reserved(), Some(reserved.peak as u64));
    let r = replay_device(&t, d, &ReplayOptions::default(), |_| {}).unwrap();
    assert_eq!(
        r.peak_reserved, reserved.peak as u64,
        "same allocator, same result"
    );
    drop(keep);
}

#[test]
fn a_replay_starts_from_the_cache_the_snapshot_began_with() {
    // Segments cached before the history starts (all their blocks freed), then a workload
    // recorded with the peak statistics reset: a warm replay starts where the allocator did
    // and must reach exactly its peak.
    let alloc = CachingAllocator::new(SimBackend::new(1 << 30), Config::fixed_segments()).unwrap();
    let before: Vec<_> = [30 * MIB, 3 * MIB, 300_000, 512 * MIB]
        .iter()
        .map(|&n| alloc.malloc(n, 0).unwrap())
        .collect();
    drop(before);
    let start = alloc.reserved_bytes(0);
    assert_eq!(start, (30 + 20 + 2 + 512) * MIB);
    alloc.reset_peak_memory_stats(0).unwrap();
    alloc.record_history(true, 10_000);
    let mut keep = Vec::new();
    for i in 0..60u64 {
        let a = alloc.malloc((i % 11 + 1) * 1_700_000, 0).unwrap();
        if i % 4 == 0 {
            keep.push(a);
        }
    }
    let peak = alloc.memory_stats(0).unwrap().segments.reserved_bytes[0].peak as u64;
    let bytes = alloc.snapshot_pickle().unwrap();
    let t = parse_trace("warm.pickle", &bytes).unwrap();
    let d = &t.devices[0];
    assert_eq!(d.pytorch_start_reserved, Some(start));
    let mut sizes: Vec<u64> = d.initial_segments.iter().map(|s| s.size).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![2 * MIB, 20 * MIB, 30 * MIB, 512 * MIB]);
    // The snapshot records expandable_segments False, which PyTorch records by default:
    // a replay of it gets cudalloc's defaults unless told otherwise.
    let fixed = ReplayOptions {
        config: Some(Config::fixed_segments()),
        ..ReplayOptions::default()
    };
    let warm = replay_device(&t, d, &fixed, |_| {}).unwrap();
    assert_eq!(warm.warm_segments, 4);
    assert_eq!(
        warm.peak_reserved, peak,
        "same allocator, same start, same peak"
    );
    assert_eq!(d.pytorch_peak_reserved(), Some(peak));
    let cold = ReplayOptions {
        cold_start: true,
        ..fixed
    };
    let cold = replay_device(&t, d, &cold, |_| {}).unwrap();
    assert_eq!(cold.warm_segments, 0);
    assert!(
        cold.peak_reserved < start,
        "the workload fits in the cache it started with; empty, it needs less"
    );
    // A snapshot of expandable segments maps pages: no segments to start from.
    let cfg = Config::parse("expandable_segments:True").unwrap();
    let vmm = CachingAllocator::new(SimBackend::new(1 << 30), cfg).unwrap();
    let early = vmm.malloc(30 * MIB, 0).unwrap();
    vmm.record_history(true, 100);
    let late = vmm.malloc(30 * MIB, 0).unwrap();
    let t2 = parse_trace("vmm.pickle", &vmm.snapshot_pickle().unwrap()).unwrap();
    assert!(t2.devices[0].initial_segments.is_empty());
    drop((early, late));
    // Expandable segments always start empty.
    let exp = ReplayOptions {
        config: Some(Config::parse("expandable_segments:True").unwrap()),
        ..ReplayOptions::default()
    };
    assert_eq!(replay_device(&t, d, &exp, |_| {}).unwrap().warm_segments, 0);
    drop(keep);
}

#[test]
fn shared_frames_are_read_fast() {
    // A snapshot whose 20 000 events all share one 2 000-frame stack through the pickle memo.
    let script = "import pickle,sys\n\
        frames=[{'filename':'f%d.py'%i,'line':i,'name':'fn'} for i in range(2000)]\n\
        ev=[]\n\
        for i in range(10000):\n\
        \x20   ev.append({'action':'alloc','addr':4096*i,'size':512,'stream':0,'frames':frames})\n\
        \x20   ev.append({'action':'free_completed','addr':4096*i,'size':512,'stream':0,'frames':frames})\n\
        d={'segments':[],'device_traces':[ev],'allocator_settings':{}}\n\
        sys.stdout.buffer.write(pickle.dumps(d,4))\n";
    let out = match Command::new("python3").arg("-c").arg(script).output() {
        Ok(o) if o.status.success() => o.stdout,
        _ => {
            eprintln!("python3 not available: skipping the shared-frames read test");
            return;
        }
    };
    let started = std::time::Instant::now();
    let t = parse_trace("frames.pickle", &out).unwrap();
    let took = started.elapsed();
    assert_eq!(t.devices[0].events.len(), 20_000);
    eprintln!("read {} bytes with shared frames in {took:?}", out.len());
    // Copying the frames per reference would take seconds; sharing keeps it well under.
    assert!(took.as_secs_f64() < 2.0, "{took:?}");
}

#[test]
fn cli_replay_json_and_outputs() {
    let csv = "action,ptr,size,stream\nalloc,0x1000,5000000,0\nalloc,0x9000,700,0\nfree,0x1000,5000000,0\n";
    let trace = tmp("cli.csv", csv.as_bytes());
    let snap = tmp("cli-snap.pickle", b"");
    let plot = tmp("cli-plot.svg", b"");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args([
            "replay",
            "--json",
            "--conf",
            "max_split_size_mb:64",
            "--conf",
            "",
        ])
        .arg(&trace)
        .arg("--dump-snapshot")
        .arg(&snap)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one object per configuration");
    for v in &lines {
        for key in [
            "trace",
            "device",
            "events",
            "peak_allocated",
            "peak_reserved",
            "pytorch_peak_reserved",
            "device_allocs",
            "pytorch_segment_allocs",
            "ooms",
            "seconds",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["events"], 3);
        assert_eq!(v["peak_allocated"], 5_000_700);
        assert!(v["pytorch_peak_reserved"].is_null());
    }
    assert_eq!(lines[0]["config"], "max_split_size_mb:64");
    let s = std::fs::read(&snap).unwrap();
    assert!(
        parse_trace("snap", &s).is_ok(),
        "the dumped snapshot reads back"
    );
    assert!(snap.with_file_name("cli-snap-2.pickle").exists());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("cudalloc reserved"));

    // The summary at the peak, fixed segments: after the second alloc (event 1, a new small
    // segment), before the free.
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args([
            "replay",
            "--summary-at-peak",
            "--conf",
            "expandable_segments:False",
        ])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("cudalloc at its peak (after event 1) [expandable_segments:False]:"),
        "{stdout}"
    );
    assert!(stdout.contains("memory summary"), "{stdout}");
    let summary = &stdout[stdout.find("|====").unwrap()..];
    let allocated = summary
        .lines()
        .find(|l| l.starts_with("| Allocated memory"))
        .unwrap();
    // Both blocks live (5000192 + 1024 bytes), nothing freed yet.
    assert!(
        allocated.contains("4884 KiB |   4884 KiB |   4884 KiB |      0 B"),
        "{allocated}"
    );

    // --suggest: the trace's settings and five others, ranked by peak reserved.
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args(["replay", "--suggest"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ranked: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("settings ranked"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(ranked.len(), 6, "{stdout}");
    let peaks: Vec<f64> = ranked
        .iter()
        .map(|l| {
            let mib = l.split(" MiB").next().unwrap();
            mib.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(peaks.windows(2).all(|w| w[0] <= w[1]), "{stdout}");
    assert!(stdout.contains("expandable_segments:True"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args(["replay", "--suggest", "--conf", ""])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(!out.status.success(), "--suggest picks its own settings");

    // Errors name the file; a bad --conf names the key.
    let bad = tmp("bad.csv", b"action,ptr,size,stream\nfree,0x1,5,0\n");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .arg("replay")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv") && err.contains("line 2"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .args(["replay", "--conf", "max_split_size_mb:1"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_split_size_mb"));
}

/// The "Cur Usage" and "Peak Usage" cells of the summary's "GPU reserved memory" line, in
/// bytes (each truncated to its unit, as the summary prints them).
fn reserved_cells(summary: &str) -> (u64, u64) {
    let line = summary
        .lines()
        .find(|l| l.starts_with("| GPU reserved memory"))
        .expect("reserved line");
    let cells: Vec<u64> = line
        .split('|')
        .skip(2)
        .take(2)
        .map(|c| {
            let mut it = c.split_whitespace();
            let n: u64 = it.next().unwrap().parse().unwrap();
            let unit = match it.next().unwrap() {
                "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                u => panic!("unit {u}"),
            };
            n * unit
        })
        .collect();
    (cells[0], cells[1])
}

/// PyTorch's reserved figures for the shared traces, from their README (MiB).
const SHARED: [(&str, u64, u64); 7] = [
    ("ZidongLiu__memory__2f29ac4.pickle", 0, 1810),
    ("silmont2000__mem_snapshot__b61be40.pickle", 0, 3606),
    ("Maphsge4__snapshot__ec5be11.pickle", 13386, 21476),
    (
        "Wedsonlin__results_medium_128_training_memory_snapshot__0db7d8c.pickle",
        6900,
        6900,
    ),
    (
        "kkaitlyn111__memory_ctx128_fullstep__b1a7c70.pickle",
        18756,
        58280,
    ),
    ("JasperSolt__snapshot__6720e24.pickle", 24, 128),
    ("cranberrii__memory_snapshot__ffe2e0c.pickle", 1336, 6172),
];

#[test]
fn shared_traces_match_pytorch_figures_and_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces");
    if !dir.is_dir() {
        eprintln!("SKIPPED: {} does not exist", dir.display());
        return;
    }
    for (file, start, peak) in SHARED {
        let t = read_trace(&dir.join(file), None).unwrap();
        assert_eq!(t.devices.len(), 1, "{file}");
        let d = &t.devices[0];
        assert_eq!(
            d.pytorch_start_reserved.map(|b| b / MIB),
            Some(start),
            "{file}"
        );
        assert_eq!(
            d.pytorch_peak_reserved().map(|b| b / MIB),
            Some(peak),
            "{file}"
        );
        assert_eq!(
            d.initial_segments.iter().map(|s| s.size).sum::<u64>() / MIB,
            start,
            "{file}: the segments at the start add up to PyTorch's reserved bytes then"
        );
        let r = replay_device(&t, d, &ReplayOptions::default(), |_| {}).unwrap();
        assert_eq!(r.ooms, 0, "{file}");
        assert!(r.peak_reserved >= r.peak_allocated, "{file}");
        // From PyTorch's cache at the start, the default policy never reserves more.
        assert!(r.peak_reserved / MIB <= peak, "{file}");
        // Expandable segments: never above PyTorch, and within 2 % of the lower bound or,
        // where that is less, one 2 MiB page per stream and pool.
        let exp = ReplayOptions {
            config: Some(Config::parse("expandable_segments:True").unwrap()),
            ..ReplayOptions::default()
        };
        let exp = ReplayOptions {
            summary_at_peak: true,
            ..exp
        };
        let e = replay_device(&t, d, &exp, |_| {}).unwrap();
        // The summary is taken at the peak: current reserved is the peak, to its unit.
        let (cur, at_peak) = reserved_cells(e.summary_at_peak.as_deref().unwrap());
        assert_eq!(cur, at_peak, "{file}");
        assert!(
            cur <= e.peak_reserved && e.peak_reserved - cur < 1 << 20,
            "{file}: summary says {cur}, peak {}",
            e.peak_reserved
        );
        let streams: std::collections::HashSet<u64> = d
            .events
            .iter()
            .map(|e| e.stream)
            .chain(d.initial_live.iter().map(|b| b.stream))
            .collect();
        let allowance = (e.peak_allocated / 50).max(streams.len() as u64 * 2 * 2 * MIB);
        assert!(
            e.peak_reserved / MIB <= peak,
            "{file}: expandable above PyTorch"
        );
        assert!(
            e.peak_reserved <= e.peak_allocated + allowance,
            "{file}: expandable {} MiB over the bound",
            (e.peak_reserved - e.peak_allocated) / MIB
        );
        eprintln!(
            "{file}: live {} MiB, PyTorch {} MiB, cudalloc {} MiB",
            r.peak_allocated / MIB,
            peak,
            r.peak_reserved / MIB
        );
    }
}
