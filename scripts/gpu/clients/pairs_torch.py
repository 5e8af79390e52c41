"""Cached malloc+free pair cost from Python, in one process and one run, for the GPU kit
(scripts/gpu/run.sh, part 4): PyTorch's caching allocator (torch.cuda.caching_allocator_alloc
/ caching_allocator_delete) against cudalloc's C ABI (cudalloc_malloc / cudalloc_free through
ctypes), the same sizes on the current stream. Both pay the Python call overhead, so the ratio
understates the difference of the allocators themselves; the C figures of `pairs` have none.
Median of ROUNDS rounds, engines interleaved. It must not judge the figures.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import cudalloc  # noqa: E402
import torch  # noqa: E402

PAIRS = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 7
SIZES = [512, 2048, 8192, 65536, 262144, 1048576, 4096, 131072]

lib = cudalloc.load()
torch.cuda.init()
stream = torch.cuda.current_stream().cuda_stream


def torch_pass():
    alloc, delete = torch.cuda.caching_allocator_alloc, torch.cuda.caching_allocator_delete
    for i in range(PAIRS):
        delete(alloc(SIZES[i & 7], 0, stream))


def cudalloc_pass():
    m, f = lib.cudalloc_malloc, lib.cudalloc_free
    for i in range(PAIRS):
        s = SIZES[i & 7]
        p = m(s, 0, stream)
        if not p:
            raise SystemExit("cudalloc_malloc failed: %s" % lib.cudalloc_last_error())
        f(p, s, 0, stream)


engines = [("torch caching_allocator", torch_pass), ("cudalloc C ABI (ctypes)", cudalloc_pass)]
samples = {n: [] for n, _ in engines}
for _, run in engines:
    run()  # warm-up
for _ in range(ROUNDS):
    for name, run in engines:
        t0 = time.perf_counter_ns()
        run()
        samples[name].append((time.perf_counter_ns() - t0) / PAIRS)
base = statistics.median(samples["cudalloc C ABI (ctypes)"])
print(f"pairs_torch: {PAIRS} pairs, median of {ROUNDS} rounds, 1 thread, ns per pair")
for name, _ in engines:
    med = statistics.median(samples[name])
    print(f"{name:26} {med:10.1f} {med / base:8.2f}x")
