//! A profiling target for the hot path: cached malloc+free pairs over the benchmarks' size
//! mixes, in a loop long enough for `perf record`, through the Rust API (and, with
//! `--raw`, through the raw pointer API the C library calls).
//!
//! ```text
//! cargo build --release --example pairs
//! perf record -g target/release/examples/pairs [small|large] [--raw] [--conf CONF] [--threads N] [--size BYTES] [--pairs N]
//! valgrind --tool=callgrind target/release/examples/pairs small --pairs 1000000
//! ```
//!
//! `--pairs` sets how many pairs are timed (20 million by default); instruction counts
//! under callgrind do not move with the machine's speed, as timings here do.
//!
//! With `--size`, every pair is of that one size instead of the mix (the best case of
//! the parked free: each request takes the block just freed straight back).
//!
//! With `--threads N`, N threads each run the loop on a stream of their own, and the figure
//! is wall time over all their pairs.
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
    let threads: usize = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .map_or(1, |n| n.parse().expect("a thread count"));
    let config = Config::parse(conf).expect("a valid --conf");
    let backend = SimBackend::new(64 << 30).virtual_only().auto_complete();
    let alloc = CachingAllocator::new(backend, config).expect("the allocator starts");
    let one_size: Option<u64> = args
        .iter()
        .position(|a| a == "--size")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("a size in bytes"));
    let sizes = match one_size {
        Some(s) => vec![s; 1024],
        None => sizes::mix(small).0,
    };
    let streams: Vec<u64> = (0..threads)
        .map(|t| {
            if t == 0 {
                0
            } else {
                alloc.backend().create_stream()
            }
        })
        .collect();
    let pass = |stream: u64| {
        for &s in &sizes {
            if raw {
                let p = alloc.allocate_raw(0, s, stream).expect("cached malloc");
                alloc
                    .free_raw_on(0, black_box(p), Some(stream))
                    .expect("free");
            } else {
                let a = alloc.malloc(s, stream).expect("cached malloc");
                black_box(a.ptr());
            }
        }
    };
    for &s in &streams {
        pass(s);
    }
    let total: usize = args
        .iter()
        .position(|a| a == "--pairs")
        .and_then(|i| args.get(i + 1))
        .map_or(20_000_000, |n| n.parse().expect("a pair count"));
    let reps = (total / sizes.len() / threads).max(1);
    let t = Instant::now();
    std::thread::scope(|sc| {
        for &s in &streams {
            sc.spawn(move || {
                for _ in 0..reps {
                    pass(s);
                }
            });
        }
    });
    let ns = t.elapsed().as_nanos() as f64 / (reps * sizes.len() * threads) as f64;
    println!(
        "{} pairs of {} ({}, {threads} thread(s)): {ns:.1} ns/pair",
        reps * sizes.len() * threads,
        match one_size {
            Some(s) => format!("{s} bytes"),
            None if small => "the small mix".into(),
            None => "the large mix".into(),
        },
        if raw { "raw API" } else { "Rust API" }
    );
}
