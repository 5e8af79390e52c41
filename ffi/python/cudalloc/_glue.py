"""Build and load torch_glue.cpp, the C++ glue that installs cudalloc as PyTorch's allocator.

The glue is compiled once per torch installation (its headers and its C++ ABI) into a cache
directory: CUDALLOC_CACHE_DIR, else $XDG_CACHE_HOME/cudalloc, else ~/.cache/cudalloc. It needs
a C++ compiler (CXX, else g++) and the CUDA runtime headers the torch wheel's dependencies
ship (nvidia-cuda-runtime / nvidia-cuda-crt). This module must not touch the allocator: it only
produces the library and the function table the glue is given.
"""
import ctypes
import hashlib
import os
import subprocess
import tempfile

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_glue.cpp")


class _Api(ctypes.Structure):
    # Mirrors struct cudalloc_torch_api of torch_glue.cpp.
    _fields_ = [
        (n, ctypes.c_void_p)
        for n in ("malloc", "free", "record_stream_any", "empty_cache", "set_memory_fraction",
                  "last_error", "last_status", "base_allocation", "set_history_context")
    ]


def _cache_dir():
    d = os.environ.get("CUDALLOC_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "cudalloc")
    return d


def _include_dirs(torch_dir):
    """torch's headers and the CUDA runtime headers next to it (nvidia/cu*/include)."""
    site = os.path.dirname(torch_dir)
    dirs = [os.path.join(torch_dir, "include")]
    nvidia = os.path.join(site, "nvidia")
    if os.path.isdir(nvidia):
        for name in sorted(os.listdir(nvidia)):
            inc = os.path.join(nvidia, name, "include")
            if os.path.exists(os.path.join(inc, "cuda_runtime_api.h")):
                dirs.append(inc)
    return dirs


def build(torch, error):
    """The path of the compiled glue for this torch, building it if needed; `error` is the
    exception class to raise."""
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + f"{torch.__version__}|{torch_dir}|{abi}".encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    lib = os.path.join(out_dir, f"libcudalloc_torch_{key}.so")
    if os.path.exists(lib):
        return lib
    os.makedirs(out_dir, exist_ok=True)
    cxx = os.environ.get("CXX", "g++")
    torch_lib = os.path.join(torch_dir, "lib")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++20", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
           "-o", tmp, _SOURCE]
    cmd += [f"-I{d}" for d in _include_dirs(torch_dir)]
    cmd += [f"-L{torch_lib}", "-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10",
            f"-Wl,-rpath,{torch_lib}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        os.unlink(tmp)
        raise error(f"cannot run the C++ compiler {cxx} to build cudalloc's PyTorch glue: {e}")
    if r.returncode != 0:
        os.unlink(tmp)
        first = next((line for line in r.stderr.splitlines() if "error" in line), r.stderr[-500:])
        raise error(f"building cudalloc's PyTorch glue failed ({' '.join(cmd)}): {first}")
    os.replace(tmp, lib)  # atomic: a concurrent build cannot leave half a library
    return lib


def install(torch, lib, error):
    """Install libcudalloc.so (`lib`, a ctypes.CDLL) as PyTorch's CUDA allocator."""
    glue = ctypes.CDLL(build(torch, error))
    api = _Api(*(ctypes.cast(getattr(lib, "cudalloc_" + n), ctypes.c_void_p).value
                 for n, _ in _Api._fields_))
    err = ctypes.create_string_buffer(2048)
    f = glue.cudalloc_torch_install
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.POINTER(_Api), ctypes.c_char_p, ctypes.c_size_t]
    if f(ctypes.byref(api), err, len(err)) != 0:
        raise error(f"installing cudalloc in PyTorch failed: {err.value.decode(errors='replace')}")
    glue.cudalloc_torch_set_stacks.restype = None
    glue.cudalloc_torch_set_stacks.argtypes = [ctypes.c_size_t]
    # The same library through PyDLL, which keeps the GIL during the call: symbolizing reads
    # Python code objects.
    glue.with_gil = ctypes.PyDLL(glue._name)
    fr = glue.with_gil.cudalloc_torch_frames
    fr.restype = ctypes.c_size_t
    fr.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.c_char_p,
                   ctypes.c_size_t]
    return glue


def set_stacks(glue, max_entries):
    """Keep the Python stacks of the newest max_entries calls for the history (0: stop)."""
    glue.cudalloc_torch_set_stacks(max(0, min(int(max_entries), 2**63 - 1)))


def frames(glue, ids):
    """{id: [{"filename", "line", "name"}, ...]} for the stack ids the glue still keeps,
    innermost frame first (PyTorch's order)."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    arr = (ctypes.c_uint64 * len(ids))(*ids)
    cap = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(cap)
        need = glue.with_gil.cudalloc_torch_frames(arr, len(ids), buf, cap)
        if need <= cap:
            break
        cap = need
    out = {}
    current = None
    for line in buf.value.decode(errors="replace").splitlines():
        if line.startswith("#"):
            current = out.setdefault(int(line[1:]), [])
        elif current is not None:
            lineno, name, filename = line.split("\t", 2)
            current.append({"filename": filename, "line": int(lineno), "name": name})
    return out
