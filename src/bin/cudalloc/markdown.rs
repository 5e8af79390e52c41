//! `cudalloc replay --markdown`: every replay of the run as one Markdown table (per setting
//! and start: each trace's lower bound, PyTorch's and cudalloc's peak reserved memory, their
//! ratio and device allocation calls), then a summary per setting and start (geometric means,
//! the traces where cudalloc reserves more than PyTorch). It prints what the replays
//! measured; it decides nothing and replays nothing itself.

use cudalloc::replay::ReplayReport;

use crate::output::conf_label;

/// One replay and how it started ("warm": from the snapshot's cache, "cold": empty).
pub struct Row {
    pub report: ReplayReport,
    pub start: &'static str,
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

fn short_name(trace: &str) -> String {
    let file = trace.rsplit('/').next().unwrap_or(trace);
    file.split("__").next().unwrap_or(file).to_string()
}

/// Geometric mean of `xs` (1.0 for none).
fn geomean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 1.0;
    }
    (xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp()
}

pub fn print(rows: &[Row]) {
    println!(
        "| trace | setting | start | lower bound (MiB) | PyTorch (MiB) | cudalloc (MiB) | \
         cudalloc / PyTorch | device allocs PyTorch / cudalloc | OOMs PyTorch / cudalloc |"
    );
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let r = &row.report;
        let (py, ratio, allocs, ooms) = match &r.reference {
            Some(p) => (
                mib(p.peak_reserved),
                {
                    // Bold where cudalloc reserves more.
                    let mark = if r.peak_reserved > p.peak_reserved {
                        "**"
                    } else {
                        ""
                    };
                    let x = r.peak_reserved as f64 / p.peak_reserved.max(1) as f64;
                    format!("{mark}{x:.3}{mark}")
                },
                format!("{} / {}", p.device_allocs, r.device_allocs),
                format!("{} / {}", p.ooms, r.ooms),
            ),
            None => (
                "—".into(),
                "—".into(),
                format!("— / {}", r.device_allocs),
                format!("— / {}", r.ooms),
            ),
        };
        println!(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} |",
            short_name(&r.trace),
            conf_label(r),
            row.start,
            mib(r.peak_allocated),
            py,
            mib(r.peak_reserved),
            ratio,
            allocs,
            ooms
        );
    }
    // The summary, per setting and start, in the order they first appear.
    let mut groups: Vec<(String, &'static str)> = Vec::new();
    for row in rows {
        let key = (conf_label(&row.report).to_string(), row.start);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    println!();
    println!(
        "| setting | start | traces | cudalloc / PyTorch (geomean) | cudalloc / lower bound | \
         PyTorch / lower bound | above PyTorch | device allocs cudalloc / PyTorch (max) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |");
    for (conf, start) in groups {
        let members: Vec<&ReplayReport> = rows
            .iter()
            .filter(|r| conf_label(&r.report) == conf && r.start == start)
            .map(|r| &r.report)
            .collect();
        let with_ref: Vec<(&ReplayReport, u64, u64)> = members
            .iter()
            .filter_map(|r| {
                r.reference
                    .as_ref()
                    .map(|p| (*r, p.peak_reserved, p.device_allocs))
            })
            .collect();
        let vs: Vec<f64> = with_ref
            .iter()
            .map(|(r, p, _)| r.peak_reserved as f64 / (*p).max(1) as f64)
            .collect();
        let ours: Vec<f64> = members
            .iter()
            .map(|r| r.peak_reserved as f64 / r.peak_allocated.max(1) as f64)
            .collect();
        let theirs: Vec<f64> = with_ref
            .iter()
            .map(|(r, p, _)| *p as f64 / r.peak_allocated.max(1) as f64)
            .collect();
        let above: Vec<String> = with_ref
            .iter()
            .filter(|(r, p, _)| r.peak_reserved > *p)
            .map(|(r, _, _)| short_name(&r.trace))
            .collect();
        let calls = with_ref
            .iter()
            .map(|(r, _, a)| r.device_allocs as f64 / (*a).max(1) as f64)
            .fold(0.0, f64::max);
        let or_dash = |ok: bool, s: String| if ok { s } else { "—".to_string() };
        println!(
            "| `{conf}` | {start} | {} | {} | {:.4} | {} | {} | {} |",
            members.len(),
            or_dash(!vs.is_empty(), format!("{:.4}", geomean(&vs))),
            geomean(&ours),
            or_dash(!theirs.is_empty(), format!("{:.4}", geomean(&theirs))),
            if with_ref.is_empty() {
                "—".to_string()
            } else if above.is_empty() {
                "none".to_string()
            } else {
                above.join(", ")
            },
            or_dash(!with_ref.is_empty(), format!("{calls:.2}")),
        );
    }
}
