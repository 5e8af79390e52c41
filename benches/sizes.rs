// Size mixes for the benchmarks. Included by the bench files.

/// Sizes for the `hotpath` (small: ≤ 1 MiB) or `large` (≥ 1 MiB) groups, in trace order,
/// and where they came from.
pub fn mix(small: bool) -> (Vec<u64>, String) {
    // A fixed, deterministic mix shaped like a training step: many small tensors (biases,
    // norms, scalars), some activations; used until a shipped trace provides the mix.
    let mut v = Vec::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    while v.len() < 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = if small {
            [
                4, 512, 1024, 3072, 4096, 16384, 65536, 147456, 262144, 589824,
            ][(x % 10) as usize]
        } else {
            [
                1 << 20,
                2 << 20,
                3 << 20,
                9 << 20,
                12 << 20,
                25 << 20,
                48 << 20,
            ][(x % 7) as usize]
        };
        v.push(s);
    }
    (v, "a built-in mix".to_string())
}
