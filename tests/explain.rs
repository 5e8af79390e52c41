//! `cudalloc explain`: both message formats (the two of ../shared/seeds among them), the
//! verdicts and their figures, the CLI's contract (verdict line first, JSON keys, stdin).

use std::io::Write;
use std::process::{Command, Stdio};

use cudalloc::explain::{MessageFormat, Verdict, explain_text};

const MIB: u64 = 1 << 20;

/// The older format, as in the seed guide 001.
const SEED_OLDER: &str = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; \
    11.17 GiB total capacity; 9.00 GiB already allocated; 1.50 GiB free; 9.50 GiB reserved in \
    total by PyTorch)";
/// The current format, cut after "is free", as in the seed guide 000.
const SEED_CURRENT: &str = "RuntimeError: CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 \
    has a total capacity of 23.64 GiB of which 211.00 MiB is free.";

fn current(request: &str, free: &str, allocated: &str, unallocated: &str) -> String {
    format!(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {request}. GPU 1 has a \
         total capacity of 14.58 GiB of which {free} is free. Including non-PyTorch memory, \
         this process has 14.47 GiB memory in use. Of the allocated memory {allocated} is \
         allocated by PyTorch, and {unallocated} is reserved by PyTorch but unallocated. If \
         reserved but unallocated memory is large try setting \
         PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
    )
}

#[test]
fn the_seed_messages() {
    let e = explain_text(SEED_OLDER).unwrap();
    assert_eq!(e.message.format, MessageFormat::Older);
    assert_eq!(e.message.request, 2 << 30);
    assert_eq!(e.message.allocated, Some(9 << 30));
    assert_eq!(e.message.reserved, Some(19 << 29));
    assert_eq!(e.message.free, Some(3 << 29));
    // 9.00 + 2.00 needed, 1.50 + 9.50 holdable: equal to within the figures' rounding.
    assert_eq!(e.verdict, Verdict::Unknown, "{}", e.render());
    assert!(e.missing[0].contains("rounding"), "{:?}", e.missing);

    let e = explain_text(SEED_CURRENT).unwrap();
    assert_eq!(e.message.format, MessageFormat::Current);
    assert_eq!(e.message.request, 512 * MIB);
    assert_eq!(e.message.free, Some(211 * MIB));
    assert_eq!(e.verdict, Verdict::Unknown);
    assert!(
        e.missing
            .iter()
            .any(|m| m.contains("allocated and reserved")),
        "{:?}",
        e.missing
    );
}

#[test]
fn older_format_shortage_and_fragmentation() {
    let short = SEED_OLDER.replace("Tried to allocate 2.00 GiB", "Tried to allocate 3.00 GiB");
    let e = explain_text(&short).unwrap();
    assert_eq!(e.verdict, Verdict::Shortage);
    assert_eq!(e.short_by, Some(1 << 30));
    let frag = SEED_OLDER.replace("9.50 GiB reserved", "10.50 GiB reserved");
    let e = explain_text(&frag).unwrap();
    assert_eq!(e.verdict, Verdict::Fragmentation);
    assert_eq!(e.short_by, None);
}

#[test]
fn current_format_shortage_and_fragmentation() {
    // 20 MiB asked, 5.56 MiB free, 254.34 MiB cached but free: the memory was there.
    let e = explain_text(&current("20.00 MiB", "5.56 MiB", "14.19 GiB", "254.34 MiB")).unwrap();
    assert_eq!(e.verdict, Verdict::Fragmentation);
    assert_eq!(e.message.device, Some(1));
    // 1 GiB asked, 105.56 + 154.34 MiB to be had: short by 1024 - 259.90 MiB.
    let e = explain_text(&current(
        "1.00 GiB",
        "105.56 MiB",
        "14.19 GiB",
        "154.34 MiB",
    ))
    .unwrap();
    assert_eq!(e.verdict, Verdict::Shortage);
    let short = e.short_by.unwrap();
    let expect = 1024.0 - 105.56 - 154.34;
    assert!(
        (short as f64 / MIB as f64 - expect).abs() < 0.01,
        "{short} vs {expect} MiB"
    );
    assert!(e.render().contains("No allocator setting helps"));
}

#[test]
fn wrapped_lines_read_as_one() {
    let wrapped =
        current("1.00 GiB", "105.56 MiB", "14.19 GiB", "154.34 MiB").replace(". ", ".\n  ");
    assert_eq!(explain_text(&wrapped).unwrap().verdict, Verdict::Shortage);
}

fn cli(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cudalloc"))
        .arg("explain")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_contract() {
    let msg = current("1.00 GiB", "105.56 MiB", "14.19 GiB", "154.34 MiB");
    let (ok, out, _) = cli(&[&msg], None);
    assert!(ok);
    assert_eq!(out.lines().next(), Some("verdict: shortage"));
    assert!(out.contains("record a snapshot"), "{out}");
    let (ok, out, _) = cli(&["--json"], Some(&msg));
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["verdict"], "shortage");
    assert!(v["short_by_bytes"].as_u64().unwrap() > 700 * MIB);
    let (ok, out, _) = cli(&["-"], Some(SEED_OLDER));
    assert!(ok);
    assert_eq!(out.lines().next(), Some("verdict: unknown"));
    let (ok, out, _) = cli(&["--json", SEED_CURRENT], None);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["verdict"], "unknown");
    assert!(v["short_by_bytes"].is_null());
    let (ok, _, err) = cli(&["something else entirely"], None);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("Tried to allocate"), "{err}");
}
