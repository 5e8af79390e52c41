//! What `cudalloc replay` prints: the table per trace and device (the OOM lines first, then
//! the trace's own out-of-memory verdicts, the figures, PyTorch's reference), the `--suggest`
//! ranking and the `--json` objects. It prints what the replay measured and decides nothing.

use cudalloc::replay::ReplayReport;

/// Bytes as MiB with one decimal.
pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// One replay as a JSON line; `min_capacity`: `--min-capacity`'s answer, if searched.
pub fn json_line(r: &ReplayReport, min_capacity: Option<serde_json::Value>) -> String {
    serde_json::json!({
        "trace": r.trace,
        "device": r.device,
        "config": r.config,
        "events": r.events,
        "peak_allocated": r.peak_allocated,
        "peak_reserved": r.peak_reserved,
        "pytorch_peak_reserved": r.pytorch_peak_reserved,
        "device_allocs": r.device_allocs,
        "pytorch_segment_allocs": r.pytorch_segment_allocs,
        "ooms": r.ooms,
        "warm_segments": r.warm_segments,
        "capacity": r.capacity,
        "oom_events": r.oom_events.iter().map(|o| serde_json::json!({
            "event": o.event,
            "request": o.request,
            "live": o.live,
            "device_free": o.device_free,
            "pytorch_reserved": o.pytorch_reserved,
            "verdict": o.verdict.as_str(),
            "short_by_bytes": o.short_by,
        })).collect::<Vec<_>>(),
        "peak_event": r.peak_event,
        "summary_at_peak": r.summary_at_peak,
        "seconds": r.seconds,
        "events_per_second": r.events_per_second(),
        "reference": r.reference.as_ref().map(|p| serde_json::json!({
            "engine": p.engine,
            "torch_version": p.torch_version,
            "peak_reserved": p.peak_reserved,
            "device_allocs": p.device_allocs,
            "ooms": p.ooms,
        })),
        "min_capacity": min_capacity,
    })
    .to_string()
}

pub fn print_table(reports: &[ReplayReport]) {
    let Some(first) = reports.first() else {
        return;
    };
    let lower = first.peak_allocated;
    println!("{} (device {})", first.trace, first.device);
    for r in reports.iter().filter(|r| r.ooms > 0) {
        println!(
            "  OUT OF MEMORY: {} of the trace's allocations failed under [{}] on a {} device; \
             the figures below are of a replay that did not serve them all",
            r.ooms,
            conf_label(r),
            mib(r.capacity)
        );
    }
    // The trace's own out-of-memory events, judged (the same for every setting).
    for o in &first.oom_events {
        println!("verdict: {}", o.verdict);
        let short = match (o.verdict, o.short_by) {
            (_, Some(b)) => format!("; no setting helps: cut at least {}", mib(b)),
            (cudalloc::explain::Verdict::Fragmentation, _) => format!(
                "; the memory was there in pieces: `cudalloc replay --suggest {}` ranks the \
                 settings on this capacity ({})",
                first.trace,
                mib(first.capacity)
            ),
            _ => String::new(),
        };
        println!(
            "  PyTorch failed {} at event {}: {} live, {} free on the device, PyTorch reserved {}{short}",
            mib(o.request),
            o.event,
            mib(o.live),
            mib(o.device_free),
            o.pytorch_reserved
                .map_or_else(|| "unknown".to_string(), mib),
        );
    }
    if first.peak_allocated > first.capacity {
        println!(
            "  warning: the device ({}) is smaller than the trace's peak live bytes ({}): no \
             allocator can serve this trace on it",
            mib(first.capacity),
            mib(first.peak_allocated)
        );
    }
    println!("  events replayed:            {}", first.events);
    println!("  peak live (lower bound):    {}", mib(lower));
    if let Some(p) = first.pytorch_peak_reserved {
        println!(
            "  PyTorch peak reserved:      {}  ({:+.1} % over the bound)  segment allocs: {}",
            mib(p),
            ReplayReport::overhead_pct(p, lower),
            first.pytorch_segment_allocs.unwrap_or(0)
        );
    } else if first.reference.is_none() {
        println!(
            "  PyTorch peak reserved:      unknown (the trace has no segment figures; \
             --reference pytorch replays it through PyTorch's allocator)"
        );
    }
    for r in reports {
        let mut conf = conf_label(r).to_string();
        if r.warm_segments > 0 {
            conf += &format!("; from PyTorch's {} segments at start", r.warm_segments);
        }
        let vs = match r.pytorch_peak_reserved {
            _ if r.ooms > 0 => "; not comparable with PyTorch: allocations failed".to_string(),
            Some(p) if p == r.peak_reserved => "; same as PyTorch".to_string(),
            Some(p) => format!("; {} vs PyTorch", versus(r.peak_reserved, p)),
            None => String::new(),
        };
        println!(
            "  cudalloc peak reserved:     {}  ({:+.1} % over the bound{vs})  device allocs: {}  OOMs: {}  [{conf}]",
            mib(r.peak_reserved),
            ReplayReport::overhead_pct(r.peak_reserved, lower),
            r.device_allocs,
            r.ooms,
        );
        if let Some(p) = &r.reference {
            println!(
                "  PyTorch {}'s own allocator, same events and settings: {}  ({:+.1} % over the \
                 bound; cudalloc {})  device allocs: {}  OOMs: {}  ({:.2} M events/s)",
                p.torch_version,
                mib(p.peak_reserved),
                ReplayReport::overhead_pct(p.peak_reserved, lower),
                versus(r.peak_reserved, p.peak_reserved),
                p.device_allocs,
                p.ooms,
                p.events_per_second() / 1e6,
            );
        }
        println!(
            "  replay time:                {:.4} s ({:.1} M events/s)",
            r.seconds,
            r.events_per_second() / 1e6,
        );
        if let Some(summary) = &r.summary_at_peak {
            match r.peak_event {
                Some(i) => println!("  cudalloc at its peak (after event {i}) [{conf}]:"),
                None => println!("  cudalloc at its peak (before the first event) [{conf}]:"),
            }
            println!("{summary}");
        }
    }
}

/// cudalloc's peak against another's: "same", or the difference in percent.
pub fn versus(ours: u64, theirs: u64) -> String {
    if ours == theirs {
        "the same".to_string()
    } else {
        format!(
            "{:+.1} %",
            (ours as f64 - theirs as f64) / theirs.max(1) as f64 * 100.0
        )
    }
}

/// A replay's settings as the tables show them.
pub fn conf_label(r: &ReplayReport) -> &str {
    if r.config.is_empty() {
        "defaults"
    } else {
        &r.config
    }
}

/// `config` with `expandable_segments` named, as PyTorch must be told it: cudalloc's
/// defaults are expandable segments, PyTorch's are fixed ones.
fn explicit_segments(config: &str) -> String {
    match cudalloc::Config::parse(config) {
        Ok(mut c) => {
            c.expandable_segments_set = true;
            c.to_string()
        }
        Err(_) => config.to_string(),
    }
}

/// `--suggest`: the settings ranked by OOMs (fewest first), then by peak reserved memory;
/// the trace's own setting marked; the winner as lines to paste.
pub fn print_ranking(reports: &[ReplayReport]) {
    let Some(first) = reports.first() else {
        return;
    };
    let mut order: Vec<&ReplayReport> = reports.iter().collect();
    order.sort_by_key(|r| (r.ooms, r.peak_reserved));
    println!("  settings ranked by OOMs, then cudalloc's peak reserved memory:");
    for (k, r) in order.iter().enumerate() {
        let conf = conf_label(r);
        let own = if std::ptr::eq(*r, first) {
            "  (the trace's setting)"
        } else {
            ""
        };
        let ooms = if r.ooms > 0 {
            format!("  OOMs: {}", r.ooms)
        } else {
            String::new()
        };
        let pytorch = r
            .reference
            .as_ref()
            .map(|p| {
                let po = if p.ooms > 0 {
                    format!(", OOMs: {}", p.ooms)
                } else {
                    String::new()
                };
                format!("  PyTorch's allocator: {}{po}", mib(p.peak_reserved))
            })
            .unwrap_or_default();
        println!(
            "    {}. {:<30} {:>12}  ({:+.1} % over the bound){ooms}{pytorch}{own}",
            k + 1,
            conf,
            mib(r.peak_reserved),
            ReplayReport::overhead_pct(r.peak_reserved, first.peak_allocated),
        );
    }
    let best = order[0];
    if best.ooms > 0 {
        println!(
            "  no setting serves every allocation on this capacity: the program needs less \
             memory (cudalloc explain, or the OOM lines above, say how much)"
        );
    } else {
        println!("  to use the best setting:");
        println!("    with cudalloc:           CUDALLOC_CONF={}", best.config);
        // PyTorch's figure on the same setting, when measured; its own best may differ.
        let pick = order
            .iter()
            .filter(|r| r.reference.as_ref().is_some_and(|p| p.ooms == 0))
            .min_by_key(|r| r.reference.as_ref().map(|p| p.peak_reserved));
        match pick {
            Some(r) => println!(
                "    with PyTorch's allocator: PYTORCH_CUDA_ALLOC_CONF={}",
                r.config
            ),
            None => println!(
                "    with PyTorch's allocator: PYTORCH_CUDA_ALLOC_CONF={}  (cudalloc's ranking; \
                 --reference pytorch ranks PyTorch's own)",
                explicit_segments(&best.config)
            ),
        }
    }
}
