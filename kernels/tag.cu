// Tag kernels for the GPU checks of cudalloc (scripts/gpu/run.sh, scripts/gpu/clients/).
//
// A live block is filled with 64-bit words, each derived from the word's own address and
// the block's owner (a thread id and a serial number). A second kernel counts the words
// that no longer hold what the fill wrote: a non-zero count after other threads ran means
// two live blocks overlapped (or something wrote past its block). A freed block may be
// poisoned so that a later reader of stale memory sees a pattern no tag can produce.
//
// The sources are plain CUDA C with no includes, so NVRTC compiles them as they are
// (tests/nvrtc.rs) and nvcc turns them into PTX on the GPU machine. They must not allocate,
// synchronize or depend on anything outside this file; the names are extern "C" so that
// cuModuleGetFunction finds them unmangled.

// SplitMix64's finalizer: every bit of the input moves about half the output bits, so
// neighbouring addresses and owners give unrelated tags.
__device__ __forceinline__ unsigned long long cudalloc_mix(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

// The tag of the word at `addr` in a block owned by `owner`; never equal to the poison.
__device__ __forceinline__ unsigned long long cudalloc_tag(unsigned long long addr,
                                                           unsigned long long owner) {
    unsigned long long t = cudalloc_mix(addr ^ cudalloc_mix(owner));
    return t == 0xdeadbeefdeadbeefULL ? t ^ 1ULL : t;
}

// Fill the `words` 64-bit words at `block` with their tags for `owner`.
extern "C" __global__ void cudalloc_fill_tag(unsigned long long *block,
                                             unsigned long long words,
                                             unsigned long long owner) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < words; i += stride) {
        block[i] = cudalloc_tag((unsigned long long)(block + i), owner);
    }
}

// Add to `*mismatches` the number of the `words` words at `block` that do not hold their
// tag for `owner`.
extern "C" __global__ void cudalloc_verify_tag(const unsigned long long *block,
                                               unsigned long long words,
                                               unsigned long long owner,
                                               unsigned long long *mismatches) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long bad = 0;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < words; i += stride) {
        bad += block[i] != cudalloc_tag((unsigned long long)(block + i), owner);
    }
    if (bad != 0) {
        atomicAdd(mismatches, bad);
    }
}

// Fill a freed block with 0xdeadbeefdeadbeef, a value cudalloc_tag never returns.
extern "C" __global__ void cudalloc_poison(unsigned long long *block,
                                           unsigned long long words) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < words; i += stride) {
        block[i] = 0xdeadbeefdeadbeefULL;
    }
}
