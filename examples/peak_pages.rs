//! Where the free bytes are at the peak of a replay with expandable segments: in whole
//! mapped pages (what page-level stitching could put to use) or in pages that live blocks
//! still touch (what no page-level scheme can give back).
//!
//! `cargo run --release --example peak_pages -- ../shared/traces/*.pickle`

use std::collections::HashMap;
use std::path::Path;

use cudalloc::policy::BlockState;
use cudalloc::trace::{EventKind, read_trace};
use cudalloc::{CachingAllocator, Config, SimBackend};

const PAGE: u64 = 2 << 20;
const MIB: f64 = (1 << 20) as f64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err("usage: peak_pages TRACE...".into());
    }
    for path in paths {
        let trace = read_trace(Path::new(&path), None)?;
        let Some(dev) = trace.devices.first() else {
            println!("{path}: no device in the trace");
            continue;
        };
        let backend = SimBackend::new(1 << 40).virtual_only().auto_complete();
        let alloc = CachingAllocator::new(backend, Config::parse("expandable_segments:True")?)?;
        let mut ptrs = HashMap::new();
        for b in &dev.initial_live {
            ptrs.insert(b.addr, alloc.allocate_raw(0, b.size, b.stream)?);
        }
        let (mut peak, mut at_peak) = (alloc.reserved_bytes(0), alloc.snapshot(0)?);
        for e in &dev.events {
            match e.kind {
                EventKind::Alloc if e.size > 0 => {
                    ptrs.insert(e.addr, alloc.allocate_raw(0, e.size, e.stream)?);
                    let r = alloc.reserved_bytes(0);
                    if r > peak {
                        peak = r;
                        at_peak = alloc.snapshot(0)?;
                    }
                }
                EventKind::Free => {
                    if let Some(p) = ptrs.remove(&e.addr) {
                        alloc.free_raw(0, p)?;
                    }
                }
                EventKind::SegmentFree => alloc.empty_cache(Some(0))?,
                _ => {}
            }
        }
        let (mut whole, mut partial) = (0u64, 0u64);
        for b in at_peak.iter().flat_map(|s| &s.blocks) {
            if b.state == BlockState::Free {
                let start = b.addr.div_ceil(PAGE) * PAGE;
                let end = (b.addr + b.size) / PAGE * PAGE;
                let w = end.saturating_sub(start);
                whole += w;
                partial += b.size - w;
            }
        }
        let name = path.rsplit('/').next().unwrap_or(&path);
        println!(
            "{name}: peak reserved {:.0} MiB; free then: {:.1} MiB in whole pages, {:.1} MiB in partly used pages",
            peak as f64 / MIB,
            whole as f64 / MIB,
            partial as f64 / MIB
        );
    }
    Ok(())
}
