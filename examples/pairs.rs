//! A profiling target for the hot path: cached malloc+free pairs over the benchmarks' size
//! mixes, in a loop long enough for `perf record`, through the Rust API (and, with
//! `--raw`, through the raw pointer API the C library calls).
//!
//! ```text
//! cargo build --release --example pairs
//! perf record -g target/release/examples/pairs [small|large] [--raw] [--conf CONF]
//! ```
//!
//! It prints ns per pair; the figures to quote are `cargo bench --bench vs_pytorch`'s.

use std::hint::black_box;
use std::time::Instant;

use cudalloc::{CachingAllocator, Config, SimBackend};

mod sizes {
    include!("../benches/sizes.rs");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let small = !args.iter().any(|a| a == "large");
    let raw = args.iter().any(|a| a == "--raw");
    let conf = args
        .iter()
        .position(|a| a == "--conf")
        .and_then(|i| args.get(i + 1))
        .map_or("", String::as_str);
    let config = Config::parse(conf).expect("a valid --conf");
    let backend = SimBackend::new(64 << 30).virtual_only().auto_complete();
    let alloc = CachingAllocator::new(backend, config).expect("the allocator starts");
    let (sizes, _) = sizes::mix(small);
    let pass = |alloc: &CachingAllocator<SimBackend>| {
        for &s in &sizes {
            if raw {
                let p = alloc.allocate_raw(0, s, 0).expect("cached malloc");
                alloc.free_raw_on(0, black_box(p), Some(0)).expect("free");
            } else {
                let a = alloc.malloc(s, 0).expect("cached malloc");
                black_box(a.ptr());
            }
        }
    };
    pass(&alloc);
    let reps = 20_000_000 / sizes.len();
    let t = Instant::now();
    for _ in 0..reps {
        pass(&alloc);
    }
    let ns = t.elapsed().as_nanos() as f64 / (reps * sizes.len()) as f64;
    println!(
        "{} pairs of the {} mix ({}): {ns:.1} ns/pair",
        reps * sizes.len(),
        if small { "small" } else { "large" },
        if raw { "raw API" } else { "Rust API" }
    );
}
