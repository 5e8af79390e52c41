"""CuPy with its memory pool off (cupy.cuda.set_allocator(None): every array reaches
cudaMalloc), for the GPU kit's preload check (scripts/gpu/run.sh): allocates arrays of mixed
sizes, computes on them and checks the results. Under LD_PRELOAD=libcudalloc_preload.so the
allocations go through cudalloc. With --no-compute only allocates (the stand-in runs no
kernels). It knows nothing of cudalloc.
"""
import sys

import cupy

cupy.cuda.set_allocator(None)
cupy.cuda.set_pinned_memory_allocator(None)
compute = "--no-compute" not in sys.argv
total = 0.0
for i in range(300):
    n = [1000, 100_000, 1 << 20, 3 << 20][i % 4]
    if compute:
        a = cupy.arange(n, dtype=cupy.float32)
        total += float((a * 2).sum() - a.sum() * 2)
    else:
        a = cupy.empty(n, dtype=cupy.float32)
    del a
print(f"cupy_check: 300 arrays, residual {total} {'PASS' if total == 0.0 else 'FAIL'}")
sys.exit(0 if total == 0.0 else 1)
