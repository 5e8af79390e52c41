//! `memory_summary()`: PyTorch's table, plus the lines it lacks (fragmentation, largest
//! free block, bytes waiting on events).

use std::fmt::Write;

use crate::allocator::{CacheFigures, CachingAllocator};
use crate::backend::Backend;
use crate::error::Result;
use crate::oom::format_bytes;
use crate::stats::{Stat, StatArray};

const RULE_EQ: &str =
    "|===========================================================================|";
const RULE: &str = "|---------------------------------------------------------------------------|";

/// A byte count in the unit PyTorch's summary picks from a reference value (the peak), so
/// the four columns of a line share a unit.
fn fmt_size(sz: i64, pref: i64) -> String {
    const UNITS: [&str; 6] = ["B  ", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (mut sz, mut pref) = (sz, pref as f64);
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if pref < 768.0 * 1024.0 {
            break;
        }
        unit = u;
        sz /= 1024;
        pref /= 1024.0;
    }
    format!("{sz:6} {unit}")
}

fn fmt_count(c: i64, pref: i64) -> String {
    const UNITS: [&str; 3] = [" ", "K", "M"];
    let (mut c, mut pref) = (c, pref as f64);
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if pref < 750.0 * 1000.0 {
            break;
        }
        unit = u;
        c /= 1000;
        pref /= 1000.0;
    }
    format!("{c:7} {unit} ")
}

/// One line of the table. Like PyTorch, each column picks its unit from the `all` row's
/// value in that column (`pref`), so a group of lines shares units column by column.
fn row(out: &mut String, name: &str, s: &Stat, pref: &Stat, bytes: bool) {
    let f = |v: i64, p: i64| {
        if bytes {
            fmt_size(v, p)
        } else {
            fmt_count(v, p)
        }
    };
    let _ = writeln!(
        out,
        "| {:<21} | {} | {} | {} | {} |",
        name,
        f(s.current, pref.current),
        f(s.peak, pref.peak),
        f(s.allocated, pref.allocated),
        f(s.freed, pref.freed)
    );
}

fn group(out: &mut String, name: &str, a: &StatArray, bytes: bool) {
    row(out, name, &a[0], &a[0], bytes);
    row(out, "      from large pool", &a[2], &a[0], bytes);
    row(out, "      from small pool", &a[1], &a[0], bytes);
    out.push_str(RULE);
    out.push('\n');
}

fn centered(out: &mut String, text: &str) {
    let _ = writeln!(out, "|{text:^75}|");
}

/// Render the summary of one device.
pub(crate) fn render<B: Backend>(alloc: &CachingAllocator<B>, device: usize) -> Result<String> {
    let st = alloc.memory_stats(device)?;
    let CacheFigures {
        largest_free: largest,
        free_cached,
        pending,
    } = alloc.cache_figures(device)?;
    let mut out = String::new();
    out.push_str(RULE_EQ);
    out.push('\n');
    centered(
        &mut out,
        &format!("cudalloc CUDA memory summary, device ID {device}"),
    );
    out.push_str(RULE);
    out.push('\n');
    let _ = writeln!(
        out,
        "|{:^36}|{:^38}|",
        format!("CUDA OOMs: {}", st.num_ooms),
        format!("cudaMalloc retries: {}", st.num_alloc_retries)
    );
    out.push_str(RULE_EQ);
    out.push('\n');
    let _ = writeln!(
        out,
        "|        Metric         | Cur Usage  | Peak Usage | Tot Alloc  | Tot Freed  |"
    );
    out.push_str(RULE);
    out.push('\n');
    let b = &st.blocks;
    let s = &st.segments;
    group(&mut out, "Allocated memory", &b.allocated_bytes, true);
    group(&mut out, "Active memory", &b.active_bytes, true);
    group(&mut out, "Requested memory", &b.requested_bytes, true);
    group(&mut out, "GPU reserved memory", &s.reserved_bytes, true);
    group(
        &mut out,
        "Non-releasable memory",
        &b.inactive_split_bytes,
        true,
    );
    group(&mut out, "Allocations", &b.allocation, false);
    group(&mut out, "Active allocs", &b.active, false);
    group(&mut out, "GPU reserved segments", &s.segment, false);
    group(&mut out, "Non-releasable allocs", &b.inactive_split, false);
    let (oa, os) = (&b.oversize_allocations, &s.oversize_segments);
    row(&mut out, "Oversize allocations", oa, oa, false);
    row(&mut out, "Oversize GPU segments", os, os, false);
    out.push_str(RULE_EQ);
    out.push('\n');
    // What PyTorch's table does not say.
    let reserved = s.reserved_bytes[0].current.max(0) as u64;
    let allocated = b.allocated_bytes[0].current.max(0) as u64;
    let reserved_free = reserved.saturating_sub(allocated);
    let frag = if free_cached > 0 {
        1.0 - largest as f64 / free_cached as f64
    } else {
        0.0
    };
    let lines = [
        format!("Reserved but unallocated: {}", format_bytes(reserved_free)),
        format!(
            "Fragmentation (1 - largest free / free): {:.1} %",
            frag * 100.0
        ),
        format!("Largest free block: {}", format_bytes(largest)),
        format!("Freed, waiting on stream events: {}", format_bytes(pending)),
        format!(
            "Device allocs / frees (cuMemAlloc / cuMemFree): {} / {}",
            st.num_device_alloc, st.num_device_free
        ),
    ];
    for l in lines {
        let _ = writeln!(out, "| {l:<74}|");
    }
    out.push_str(RULE_EQ);
    out.push('\n');
    Ok(out)
}

impl<B: Backend> CachingAllocator<B> {
    /// The memory summary of `device`: PyTorch's `torch.cuda.memory_summary()` table, plus
    /// fragmentation (reserved-but-free bytes and 1 − largest free block / free bytes), the
    /// largest free block and bytes waiting on stream events.
    ///
    /// # Errors
    /// An unknown device.
    pub fn memory_summary(&self, device: usize) -> Result<String> {
        render(self, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pick_unit_from_peak() {
        assert_eq!(fmt_size(0, 0), "     0 B  ");
        assert_eq!(fmt_size(2 << 20, 2 << 20), "  2048 KiB");
        assert_eq!(fmt_size(1 << 30, 1 << 30), "  1024 MiB");
        assert_eq!(fmt_count(5, 5), "      5   ");
        assert_eq!(fmt_count(2_000_000, 2_000_000), "   2000 K ");
    }
}
