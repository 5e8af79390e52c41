//! `cargo bench`: the hot path against its peers in the same run, thread scaling, and trace
//! replay speed.
//!
//! Groups: `hotpath` (cached malloc+free pairs, small-pool size mix), `large` (sizes ≥ 1 MiB),
//! `threads` (1, 2 and nproc threads, each on its own stream), `replay` (shipped traces).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cudalloc::{CachingAllocator, Config, SimBackend};
use mimalloc::MiMalloc;

mod sizes {
    include!("sizes.rs");
}

fn allocator() -> CachingAllocator<SimBackend> {
    // Virtual addresses: the benchmark never touches the memory, and the simulated device
    // must not cost host RAM.
    let backend = SimBackend::new(64 << 30).virtual_only().auto_complete();
    CachingAllocator::new(backend, Config::default()).expect("default config")
}

fn pairs_cudalloc(alloc: &CachingAllocator<SimBackend>, sizes: &[u64], stream: u64) {
    for &s in sizes {
        let a = alloc.malloc(s, stream).expect("cached malloc");
        black_box(a.ptr());
    }
}

fn pairs_global<A: GlobalAlloc>(a: &A, sizes: &[u64]) {
    for &s in sizes {
        let layout = Layout::from_size_align(s as usize, 256).expect("layout");
        // SAFETY: the layout has a non-zero size; the pointer is freed at once with the
        // same layout and never dereferenced.
        unsafe {
            let p = a.alloc(layout);
            black_box(p);
            a.dealloc(p, layout);
        }
    }
}

fn bench_mix(c: &mut Criterion, group: &str, sizes: &[u64]) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(sizes.len() as u64));
    let alloc = allocator();
    pairs_cudalloc(&alloc, sizes, 0); // warm the cache
    g.bench_function("cudalloc", |b| b.iter(|| pairs_cudalloc(&alloc, sizes, 0)));
    g.bench_function("mimalloc", |b| b.iter(|| pairs_global(&MiMalloc, sizes)));
    g.bench_function("system", |b| b.iter(|| pairs_global(&System, sizes)));
    g.finish();
}

fn hotpath(c: &mut Criterion) {
    let (sizes, source) = sizes::mix(true);
    eprintln!("hotpath: {} sizes from {source}", sizes.len());
    bench_mix(c, "hotpath", &sizes);
}

fn large(c: &mut Criterion) {
    let (sizes, source) = sizes::mix(false);
    eprintln!("large: {} sizes from {source}", sizes.len());
    bench_mix(c, "large", &sizes);
}

fn threads(c: &mut Criterion) {
    let (sizes, _) = sizes::mix(true);
    let nproc = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut counts = vec![1, 2];
    if nproc > 2 {
        counts.push(nproc);
    }
    let mut g = c.benchmark_group("threads");
    for n in counts {
        let alloc = allocator();
        let streams: Vec<u64> = (0..n).map(|_| alloc.backend().create_stream()).collect();
        for &s in &streams {
            pairs_cudalloc(&alloc, &sizes, s);
        }
        g.throughput(Throughput::Elements((sizes.len() * n) as u64));
        g.bench_function(format!("cudalloc/{n}"), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(n + 1);
                std::thread::scope(|sc| {
                    for &s in &streams {
                        let (alloc, sizes, barrier) = (&alloc, &sizes, &barrier);
                        sc.spawn(move || {
                            barrier.wait();
                            for _ in 0..iters {
                                pairs_cudalloc(alloc, sizes, s);
                            }
                            barrier.wait();
                        });
                    }
                    barrier.wait();
                    let t = Instant::now();
                    barrier.wait();
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

/// Each shipped trace replayed end to end on the simulated device: events per second.
fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("traces/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    paths.sort();
    for path in paths {
        let trace = cudalloc::trace::read_trace(&path, None).expect("shipped trace");
        let dev = &trace.devices[0];
        let events = (dev.initial_live.len() + dev.block_events()) as u64;
        g.throughput(Throughput::Elements(events));
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let opts = cudalloc::replay::ReplayOptions::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = cudalloc::replay::replay_device(&trace, dev, &opts, |_| {}).unwrap();
                black_box(r.peak_reserved)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = hotpath, large, threads, replay
}
criterion_main!(benches);
