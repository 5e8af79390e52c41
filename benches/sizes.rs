// Size mixes for the benchmarks, taken from a shipped trace. Included by the bench files.

use std::path::Path;

/// The shipped trace the size mixes come from.
pub const TRACE: &str = "traces/cpu_gpt2_train.csv";

/// Allocation sizes of the shipped trace, in trace order: the small-pool ones (≤ 1 MiB) for
/// `hotpath`, the ones ≥ 1 MiB for `large`; at most 1024, and where they came from.
pub fn mix(small: bool) -> (Vec<u64>, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(TRACE);
    let trace = cudalloc::trace::read_trace(&path, None).expect("the shipped trace reads");
    let sizes: Vec<u64> = trace.devices[0]
        .events
        .iter()
        .filter(|e| e.kind == cudalloc::trace::EventKind::Alloc)
        .map(|e| e.size)
        .filter(|&s| if small { s <= 1 << 20 } else { s >= 1 << 20 })
        .take(1024)
        .collect();
    assert!(!sizes.is_empty());
    (sizes, TRACE.to_string())
}
