//! `cudalloc replay --min-capacity`: for each replay, the smallest device capacity at which
//! cudalloc completes the trace without running out of memory and, with `--reference
//! pytorch`, the smallest at which PyTorch's allocator does, then each allocator replayed at
//! the other's smallest capacity. The bisection is `cudalloc::capacity`'s; this file runs the
//! replays and prints the answer.

use std::ffi::OsStr;

use cudalloc::capacity::{CapacityFit, STEP, smallest_capacity};
use cudalloc::reference::replay_pytorch;
use cudalloc::replay::{ReplayOptions, ReplayReport, replay_device, script};
use cudalloc::trace::{DeviceTrace, Trace};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Search both allocators' smallest capacities for the replay `r` of `dev` made with `opts`
/// (and PyTorch's, when `python` is given and `r` has its figures).
pub fn search(
    trace: &Trace,
    dev: &DeviceTrace,
    opts: &ReplayOptions,
    r: &ReplayReport,
    python: Option<&OsStr>,
) -> Result<CapacityFit> {
    let quiet = ReplayOptions {
        series_points: 0,
        record_history: false,
        summary_at_peak: false,
        ..opts.clone()
    };
    let cudalloc_ooms = |c: u64| -> Result<u64> {
        let o = ReplayOptions {
            capacity: Some(c),
            ..quiet.clone()
        };
        Ok(replay_device(trace, dev, &o, |_| {})?.ooms)
    };
    let config = opts.config_for(dev);
    let ops = script(dev, opts, &config);
    let pytorch_ooms = |c: u64| -> Result<u64> {
        let python = python.expect("only called with a reference");
        Ok(replay_pytorch(&ops, &config, c, python)?.ooms)
    };
    // No capacity below the live peak (rounded as both allocators round) can complete.
    let lo = r.peak_allocated.saturating_sub(1);
    let mut probes = 0;
    let cudalloc = smallest_capacity(lo, r.peak_reserved, &mut probes, cudalloc_ooms)?;
    let mut fit = CapacityFit {
        cudalloc,
        reference_searched: false,
        reference: None,
        cudalloc_ooms_at_reference: None,
        reference_ooms_at_cudalloc: None,
        probes,
    };
    let Some(reference) = r.reference.as_ref().filter(|_| python.is_some()) else {
        return Ok(fit);
    };
    fit.reference_searched = true;
    fit.reference = smallest_capacity(lo, reference.peak_reserved, &mut probes, pytorch_ooms)?;
    if let Some(p) = fit.reference {
        probes += 1;
        fit.cudalloc_ooms_at_reference = Some(cudalloc_ooms(p)?);
        if let Some(c) = fit.cudalloc.filter(|&c| c < p) {
            probes += 1;
            fit.reference_ooms_at_cudalloc = Some(pytorch_ooms(c)?);
        }
    }
    fit.probes = probes;
    Ok(fit)
}

fn ooms(n: u64) -> String {
    format!("{n} OOM{}", if n == 1 { "" } else { "s" })
}

/// What a replay with `n` out-of-memory errors did: `done` when it completed.
fn outcome(n: u64, done: &str) -> String {
    if n == 0 {
        done.to_string()
    } else {
        format!("fails ({})", ooms(n))
    }
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The text lines of a search's answer.
pub fn print(fit: &CapacityFit) {
    let or_none = |c: Option<u64>| c.map_or("none (fails even at its own peak)".into(), mib);
    println!(
        "  smallest capacity without OOM ({} MiB steps, {} replays): cudalloc {}{}",
        STEP >> 20,
        fit.probes,
        or_none(fit.cudalloc),
        if fit.reference_searched {
            format!(", PyTorch {}", or_none(fit.reference))
        } else {
            String::new()
        }
    );
    if let (Some(p), Some(n)) = (fit.reference, fit.cudalloc_ooms_at_reference) {
        println!(
            "  at PyTorch's smallest ({}): cudalloc {}",
            mib(p),
            outcome(n, "completes")
        );
    }
    if let (Some(c), Some(n)) = (fit.cudalloc, fit.reference_ooms_at_cudalloc) {
        println!(
            "  at cudalloc's smallest ({}): PyTorch {}",
            mib(c),
            outcome(n, "completes too (the bisection missed a smaller one)")
        );
    }
}

/// The JSON of a search's answer.
pub fn json(fit: &CapacityFit) -> serde_json::Value {
    serde_json::json!({
        "step": STEP,
        "cudalloc": fit.cudalloc,
        "pytorch": fit.reference,
        "cudalloc_ooms_at_pytorch": fit.cudalloc_ooms_at_reference,
        "pytorch_ooms_at_cudalloc": fit.reference_ooms_at_cudalloc,
        "probes": fit.probes,
    })
}
