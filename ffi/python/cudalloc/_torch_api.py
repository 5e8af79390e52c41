"""torch.cuda's memory API over cudalloc: the torch._C entry points torch.cuda.memory calls,
replaced after install_pytorch() so that every function of torch.cuda.memory answers with
cudalloc's figures (PyTorch's pluggable allocator refuses them: pytorch#133281).

Replaced: _cuda_memoryStats (memory_stats, memory_allocated, memory_reserved, max_*,
memory_summary, ...), _cuda_resetPeakMemoryStats, _cuda_resetAccumulatedMemoryStats,
_cuda_setMemoryFraction/_cuda_getMemoryFraction (the fraction is enforced by cudalloc, through
the glue's hook; here it is also remembered for the getter), _cuda_record_memory_history(_legacy)
and _cuda_memorySnapshot (_record_memory_history, _snapshot, _dump_snapshot, memory_snapshot).
empty_cache and record_stream need no patch: PyTorch calls the glue's hooks for them.

This module must not compute any figure itself: it reshapes what libcudalloc.so reports.
"""
import os
import pickle
import tempfile

from . import _glue

_fraction = {}


def _device(torch, device):
    if device is None or (isinstance(device, int) and device < 0):
        return torch.cuda.current_device()
    return torch.cuda._utils._get_device_index(device, optional=True)


def _nested(flat):
    """'allocated_bytes.all.current' -> {'allocated_bytes': {'all': {'current': ...}}}, the
    shape torch._C._cuda_memoryStats returns."""
    out = {}
    for key, value in flat.items():
        node = out
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _snapshot(cudalloc, glue):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "snapshot.pickle")
        cudalloc.dump_snapshot(path)
        with open(path, "rb") as f:
            snap = pickle.load(f)
    return _with_frames(snap, glue)


def _with_frames(snap, glue):
    """Turn the stack ids cudalloc's history carries ("cudalloc_context", set by the glue)
    into PyTorch's "frames"; a block still allocated gets the frames of its allocation."""
    traces = snap.get("device_traces", [])
    ids = [e["cudalloc_context"] for t in traces for e in t if "cudalloc_context" in e]
    by_id = _glue.frames(glue, ids) if ids else {}
    alloc_frames = {}
    for t in traces:
        for e in t:
            c = e.pop("cudalloc_context", None)
            if c is not None:
                e["frames"] = by_id.get(c, [])
            if e.get("action") == "alloc":
                alloc_frames[e.get("addr")] = e.get("frames", [])
    for seg in snap.get("segments", []):
        for b in seg.get("blocks", []):
            if b.get("state") == "active_allocated" and b.get("address") in alloc_frames:
                b["frames"] = alloc_frames[b["address"]]
    return snap


def patch(torch, cudalloc, glue):
    """Replace the torch._C entry points listed above with cudalloc's (`glue`: the loaded
    torch_glue library, which keeps the Python stacks)."""
    C = torch._C
    set_fraction = C._cuda_setMemoryFraction

    def memory_stats(device=None):
        return _nested(cudalloc.memory_stats(_device(torch, device)))

    def reset_peak(device=None):
        cudalloc.reset_peak_memory_stats(_device(torch, device))

    def reset_accumulated(device=None):
        cudalloc.reset_accumulated_memory_stats(_device(torch, device))

    def set_memory_fraction(fraction, device):
        set_fraction(fraction, device)  # through the glue's hook: an error raises here
        _fraction[_device(torch, device)] = float(fraction)

    def get_memory_fraction(device):
        return _fraction.get(_device(torch, device), 1.0)

    def record_memory_history(enabled, context=None, stacks=None, max_entries=None, *_args, **_kw):
        entries = min(int(max_entries if max_entries is not None else 2**63 - 1), 2**63 - 1)
        on = enabled is not None
        cudalloc.record_history(on, entries)
        # PyTorch keeps Python frames for stacks="python" or "all" whenever context is set.
        python_stacks = on and context is not None and stacks in ("python", "all")
        _glue.set_stacks(glue, entries if python_stacks else 0)

    def record_memory_history_legacy(enabled, record_context=True, trace_alloc_max_entries=1,
                                     *_args, **_kw):
        entries = max(1, int(trace_alloc_max_entries))
        cudalloc.record_history(bool(enabled), entries)
        _glue.set_stacks(glue, entries if enabled and record_context else 0)

    def memory_snapshot(_which=None):
        # cudalloc keeps no private pools: a MemPool id selects nothing narrower.
        return _snapshot(cudalloc, glue)

    for name, fn in (
        ("_cuda_memoryStats", memory_stats),
        ("_cuda_resetPeakMemoryStats", reset_peak),
        ("_cuda_resetAccumulatedMemoryStats", reset_accumulated),
        ("_cuda_setMemoryFraction", set_memory_fraction),
        ("_cuda_getMemoryFraction", get_memory_fraction),
        ("_cuda_record_memory_history", record_memory_history),
        ("_cuda_record_memory_history_legacy", record_memory_history_legacy),
        ("_cuda_memorySnapshot", memory_snapshot),
    ):
        fn.__name__ = name
        fn.__doc__ = f"cudalloc's replacement for torch._C.{name} (installed by install_pytorch)"
        setattr(C, name, fn)
