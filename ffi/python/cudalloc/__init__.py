"""cudalloc for Python: install it as PyTorch's or CuPy's CUDA allocator, and read its
statistics and summary — which PyTorch's pluggable-allocator path cannot report itself
(pytorch#133281).

    import cudalloc
    cudalloc.install_pytorch()          # before the first CUDA allocation
    ...
    print(cudalloc.memory_summary())
    cudalloc.memory_stats()["reserved_bytes.all.peak"]

The library is found through CUDALLOC_LIBRARY (a path to libcudalloc.so), else in this package
(where `pip install ./ffi/python` builds it), else in the repository's target/release or
target/debug.
"""
import ctypes
import importlib.machinery
import os

__all__ = [
    "library_path",
    "load",
    "install_pytorch",
    "install_cupy",
    "configure",
    "memory_stats",
    "memory_summary",
    "empty_cache",
    "reset_peak_memory_stats",
    "reset_accumulated_memory_stats",
    "set_memory_fraction",
    "record_history",
    "dump_snapshot",
    "version",
    "CudallocError",
]


class CudallocError(RuntimeError):
    """A cudalloc call failed; the message is cudalloc's."""


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("current", "peak", "allocated", "freed")]


_ARRAYS = [
    "allocation",
    "segment",
    "active",
    "inactive_split",
    "allocated_bytes",
    "reserved_bytes",
    "active_bytes",
    "inactive_split_bytes",
    "requested_bytes",
]
_COUNTERS = [
    "num_alloc_retries",
    "num_ooms",
    "num_sync_all_streams",
    "num_device_alloc",
    "num_device_free",
]


class _Stats(ctypes.Structure):
    # Mirrors cudalloc_stats_t of ffi/include/cudalloc.h (version 1).
    _fields_ = (
        [("struct_size", ctypes.c_size_t), ("version", ctypes.c_uint32), ("reserved_padding", ctypes.c_uint32)]
        + [(n, _Stat * 3) for n in _ARRAYS]
        + [("oversize_allocations", _Stat), ("oversize_segments", _Stat)]
        + [(n, ctypes.c_uint64) for n in _COUNTERS]
        + [("max_split_size", ctypes.c_int64)]
    )


_lib = None


def library_path():
    """Where libcudalloc.so is taken from."""
    env = os.environ.get("CUDALLOC_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    # `pip install ./ffi/python` puts the library here as _libcudalloc<EXT_SUFFIX>.
    candidates = [os.path.join(here, "_libcudalloc" + s) for s in importlib.machinery.EXTENSION_SUFFIXES]
    candidates.append(os.path.join(here, "libcudalloc.so"))
    repo = os.path.abspath(os.path.join(here, "..", "..", ".."))
    for profile in ("release", "debug"):
        candidates.append(os.path.join(repo, "target", profile, "libcudalloc.so"))
    for c in candidates:
        if os.path.exists(c):
            return c
    raise CudallocError(
        "libcudalloc.so not found: build it with `cargo build --release` or set CUDALLOC_LIBRARY "
        "(looked in: " + ", ".join(candidates) + ")"
    )


def load():
    """Load the library (once) and declare its functions."""
    global _lib
    if _lib is not None:
        return _lib
    path = library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise CudallocError(f"cannot load libcudalloc.so from {path} (CUDALLOC_LIBRARY or the "
                            f"package): {e}") from None
    sigs = {
        "cudalloc_malloc": (ctypes.c_void_p, [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]),
        "cudalloc_free": (None, [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]),
        "cudalloc_cupy_malloc": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]),
        "cudalloc_cupy_free": (None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
        "cudalloc_record_stream": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]),
        "cudalloc_record_stream_any": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
        "cudalloc_last_status": (ctypes.c_int, []),
        "cudalloc_empty_cache": (ctypes.c_int, [ctypes.c_int]),
        "cudalloc_set_memory_fraction": (ctypes.c_int, [ctypes.c_double, ctypes.c_int]),
        "cudalloc_get_stats": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(_Stats), ctypes.c_size_t]),
        "cudalloc_reset_peak_stats": (ctypes.c_int, [ctypes.c_int]),
        "cudalloc_reset_accumulated_stats": (ctypes.c_int, [ctypes.c_int]),
        "cudalloc_memory_summary": (ctypes.c_size_t, [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]),
        "cudalloc_configure": (ctypes.c_int, [ctypes.c_char_p]),
        "cudalloc_record_history": (ctypes.c_int, [ctypes.c_int, ctypes.c_size_t]),
        "cudalloc_dump_snapshot": (ctypes.c_int, [ctypes.c_char_p]),
        "cudalloc_last_error": (ctypes.c_char_p, []),
        "cudalloc_version": (ctypes.c_char_p, []),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    _lib = lib
    return lib


def _check(status):
    if status != 0:
        err = load().cudalloc_last_error()
        raise CudallocError(err.decode() if err else f"cudalloc status {status}")


def version():
    return load().cudalloc_version().decode()


def configure(conf):
    """Set the configuration (CUDALLOC_CONF syntax) before the first allocation."""
    _check(load().cudalloc_configure(conf.encode()))


def install_pytorch():
    """Make cudalloc PyTorch's CUDA allocator. Must run before CUDA is first used.

    Out of memory raises torch.OutOfMemoryError with cudalloc's explanation; Tensor.record_stream,
    torch.cuda.empty_cache and set_per_process_memory_fraction reach cudalloc; torch.cuda's
    statistics, summary, resets, _record_memory_history and _snapshot answer with cudalloc's
    figures (see cudalloc/_torch_api.py)."""
    import torch

    from . import _glue, _torch_api

    if torch.cuda.is_initialized():
        raise CudallocError(
            "install_pytorch() must be called before CUDA is first used (PyTorch can change "
            "its allocator only then): call it at the top of your program"
        )
    glue = _glue.install(torch, load(), CudallocError)
    _torch_api.patch(torch, __import__(__name__), glue)
    return glue


def install_cupy():
    """Make cudalloc CuPy's device allocator (CuPy's own pool is bypassed).

    CuPy's CFunctionAllocator passes no stream, so every CuPy allocation is served from, and
    returned to, cudalloc's pool of the default (null) stream, whatever CuPy's current stream
    is. That is safe when CuPy works on the default stream; a program running kernels on other
    CuPy streams must synchronize them before freeing arrays they use (as with any allocator
    that does not know the stream), or keep CuPy's own pool."""
    import cupy

    lib = load()
    malloc = ctypes.cast(lib.cudalloc_cupy_malloc, ctypes.c_void_p).value
    free = ctypes.cast(lib.cudalloc_cupy_free, ctypes.c_void_p).value
    alloc = cupy.cuda.memory.CFunctionAllocator(0, malloc, free, None)
    cupy.cuda.set_allocator(alloc.malloc)
    return alloc


def memory_stats(device=0):
    """PyTorch-style flat dict: 'allocated_bytes.all.current', 'num_ooms', ..."""
    s = _Stats()
    _check(load().cudalloc_get_stats(device, ctypes.byref(s), ctypes.sizeof(s)))
    out = {}
    for name in _ARRAYS:
        arr = getattr(s, name)
        for i, pool in enumerate(("all", "small_pool", "large_pool")):
            for f in ("current", "peak", "allocated", "freed"):
                out[f"{name}.{pool}.{f}"] = getattr(arr[i], f)
    for name in ("oversize_allocations", "oversize_segments"):
        st = getattr(s, name)
        for f in ("current", "peak", "allocated", "freed"):
            out[f"{name}.{f}"] = getattr(st, f)
    for name in _COUNTERS:
        out[name] = getattr(s, name)
    out["max_split_size"] = s.max_split_size
    return dict(sorted(out.items()))


def memory_summary(device=0):
    """PyTorch's memory_summary table plus fragmentation lines."""
    lib = load()
    need = lib.cudalloc_memory_summary(device, None, 0)
    if need == 0:
        _check(1)
    buf = ctypes.create_string_buffer(need)
    lib.cudalloc_memory_summary(device, buf, need)
    return buf.value.decode()


def empty_cache(device=-1):
    _check(load().cudalloc_empty_cache(device))


def reset_peak_memory_stats(device=0):
    _check(load().cudalloc_reset_peak_stats(device))


def reset_accumulated_memory_stats(device=0):
    _check(load().cudalloc_reset_accumulated_stats(device))


def set_memory_fraction(fraction, device=0):
    _check(load().cudalloc_set_memory_fraction(float(fraction), device))


def record_history(enabled=True, max_entries=100_000):
    _check(load().cudalloc_record_history(1 if enabled else 0, max_entries))


def dump_snapshot(path):
    """Write a PyTorch-format snapshot (pytorch.org/memory_viz loads it)."""
    _check(load().cudalloc_dump_snapshot(os.fspath(path).encode()))
