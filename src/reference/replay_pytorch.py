"""Replay a cudalloc replay script through PyTorch's own CUDA caching allocator.

Run by `cudalloc replay --reference pytorch` in a child process whose LD_PRELOAD holds the
stand-in CUDA (so the torch CUDA wheel runs with no GPU), with PYTORCH_CUDA_ALLOC_CONF set
to the replay's settings and CUDALLOC_STANDIN_CAPACITY to its capacity.

    python replay_pytorch.py SCRIPT

SCRIPT is a file of little-endian u64 words, four per operation: (op, a, b, c).
  op 1 ALLOC  a=trace address, b=bytes, c=stream id   (an address already live is replaced)
  op 2 FREE   a=trace address                          (unknown or failed addresses: skipped)
  op 3 EMPTY_CACHE
  op 4 WARM   b=bytes, c=stream id: allocate a block of the cache PyTorch held at the start
  op 5 WARM_DONE: free every WARM block, then count device allocations from here
Stream id 0 is the default stream; every other id gets a stream of its own.

Prints one JSON object on stdout: torch_version, peak_reserved, device_allocs, ooms, events,
seconds; or {"error": ...} with exit status 3 (no torch), 4 (no CUDA in this torch or no
stand-in device) or 5 (a malformed script). This script must not decide anything about the
replay: the order and content of the operations are cudalloc's (src/replay.rs).
"""

import json
import sys
import time
from array import array


def fail(code, message):
    print(json.dumps({"error": message}))
    sys.exit(code)


def main():
    try:
        import torch
    except ImportError as e:
        fail(3, f"{sys.executable} cannot import torch ({e})")
    version = torch.__version__.split("+")[0]
    if torch.version.cuda is None:
        fail(4, f"torch {torch.__version__} at {sys.executable} is a CPU-only build")
    if not torch.cuda.is_available():
        fail(4, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no device on the "
                "stand-in CUDA, which provides libcudart.so.13 (torch's CUDA 13 builds)")

    words = array("Q")
    with open(sys.argv[1], "rb") as f:
        words.frombytes(f.read())
    if sys.byteorder != "little":
        words.byteswap()
    if len(words) % 4:
        fail(5, "the replay script is not a whole number of operations")

    alloc = torch._C._cuda_cudaCachingAllocator_raw_alloc
    delete = torch._C._cuda_cudaCachingAllocator_raw_delete
    oom = torch.OutOfMemoryError
    streams = {0: 0}
    keep = []  # the Stream objects behind the handles

    def stream(sid):
        h = streams.get(sid)
        if h is None:
            s = torch.cuda.Stream()
            keep.append(s)
            h = streams[sid] = s.cuda_stream
        return h

    torch.cuda.init()
    live = {}
    warm = []
    ooms = 0
    events = 0
    base_allocs = 0
    start = time.perf_counter()
    for i in range(0, len(words), 4):
        op = words[i]
        if op == 1:
            addr, size = words[i + 1], words[i + 2]
            events += 1
            if size == 0:
                continue
            try:
                live[addr] = alloc(size, stream(words[i + 3]))
            except oom:
                ooms += 1
        elif op == 2:
            events += 1
            p = live.pop(words[i + 1], None)
            if p is not None:
                delete(p)
        elif op == 3:
            torch.cuda.empty_cache()
        elif op == 4:
            try:
                warm.append(alloc(words[i + 2], stream(words[i + 3])))
            except oom:
                ooms += 1
        elif op == 5:
            for p in warm:
                delete(p)
            warm.clear()
            base_allocs = torch.cuda.memory_stats().get("num_device_alloc", 0)
        else:
            fail(5, f"unknown operation {op} at word {i}")
    seconds = time.perf_counter() - start
    stats = torch.cuda.memory_stats()
    print(json.dumps({
        "torch_version": version,
        "peak_reserved": stats.get("reserved_bytes.all.peak", 0),
        "device_allocs": stats.get("num_device_alloc", 0) - base_allocs,
        "ooms": ooms,
        "events": events,
        "seconds": seconds,
    }))


main()
