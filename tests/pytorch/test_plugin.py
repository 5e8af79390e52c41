"""cudalloc installed as PyTorch's allocator (cudalloc.install_pytorch()), under real PyTorch on
the stand-in CUDA: every row of what PyTorch's own allocator does for its user, on the
simulated backend and on cudalloc's CudaBackend over the stand-in driver.

Run by tests/real_pytorch.rs, which sets, besides the variables of test_real_pytorch.py:
  CUDALLOC_LIBRARY     libcudalloc.so
  CUDALLOC_CACHE_DIR   where the C++ glue is compiled to
Each case runs in a fresh interpreter: the allocator can only be changed before CUDA starts.
"""
import csv
import json
import os
import pickle
import subprocess
import sys
import tempfile
import unittest

STANDIN = os.environ["CUDALLOC_STANDIN_PRELOAD"]
ROOT = os.environ["CUDALLOC_ROOT"]
CAPACITY = 8 << 30
MIB = 1 << 20

PRELUDE = """
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["CUDALLOC_ROOT"], "ffi", "python"))
import cudalloc, torch
cudalloc.install_pytorch()
"""


def report(path):
    with open(path) as f:
        return {k: int(v) for k, v in (line.strip().split("=", 1) for line in f if "=" in line)}


def rounded(n):
    return (n + 511) // 512 * 512


class Plugin:
    """The cases; BACKEND is set by the subclasses below."""

    BACKEND = None

    def run_child(self, code, env=None, stdin=None):
        full = dict(os.environ)
        for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING", "CUDALLOC_CONF"):
            full.pop(k, None)
        full.update({"LD_PRELOAD": STANDIN, "CUDALLOC_BACKEND": self.BACKEND,
                     "CUDALLOC_SIM_CAPACITY": str(CAPACITY),
                     "CUDALLOC_STANDIN_CAPACITY": str(CAPACITY)})
        full.update(env or {})
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", PRELUDE + code], env=full,
                             input=stdin, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"child failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def test_out_of_memory_raises_and_the_allocator_keeps_working(self):
        r = self.run_child("""
x = torch.empty(3 << 20, dtype=torch.uint8, device="cuda")
msgs = []
for _ in range(2):
    try:
        t = torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
        msgs.append(None)
    except torch.OutOfMemoryError as e:
        msgs.append(str(e))
y = torch.empty(5 << 20, dtype=torch.uint8, device="cuda")
s = torch.cuda.memory_stats()
print(json.dumps({"msgs": msgs, "ptr": y.data_ptr(), "ooms": s["num_ooms"],
                  "allocated": torch.cuda.memory_allocated(), "count": s["allocation.all.current"]}))
""")
        self.assertEqual(len(r["msgs"]), 2)
        for m in r["msgs"]:
            self.assertIsNotNone(m, "a 1 PiB tensor was handed out")
            self.assertIn("Tried to allocate 1024.00 TiB", m)
            self.assertIn("cudalloc", m)
        self.assertNotEqual(r["ptr"], 0)
        self.assertEqual(r["ooms"], 2)
        self.assertEqual(r["allocated"], 8 << 20)
        self.assertEqual(r["count"], 2)

    def test_torch_cuda_statistics_are_cudallocs(self):
        r = self.run_child("""
xs = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in (1, 1000, 3 << 20, 50 << 20)]
a = {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved(),
     "max_allocated": torch.cuda.max_memory_allocated(),
     "max_reserved": torch.cuda.max_memory_reserved(),
     "same": torch.cuda.memory_stats() == cudalloc.memory_stats(),
     "summary": torch.cuda.memory_summary()}
del xs[3]
a["after_free"] = torch.cuda.memory_allocated()
a["peak_before_reset"] = torch.cuda.max_memory_allocated()
torch.cuda.reset_peak_memory_stats()
a["peak_after_reset"] = torch.cuda.max_memory_allocated()
torch.cuda.reset_accumulated_memory_stats()
s = torch.cuda.memory_stats()
a["alloc_count_after_reset"] = s["allocation.all.allocated"]
a["cudalloc_reserved"] = cudalloc.memory_stats()["reserved_bytes.all.current"]
print(json.dumps(a))
""")
        want = 512 + 1024 + 3 * MIB + 50 * MIB
        self.assertEqual(r["allocated"], want)
        self.assertEqual(r["max_allocated"], want)
        self.assertGreaterEqual(r["reserved"], want)
        self.assertEqual(r["max_reserved"], r["reserved"])
        self.assertTrue(r["same"], "torch.cuda.memory_stats() is cudalloc's")
        self.assertIn("PyTorch CUDA memory summary", r["summary"])
        self.assertIn(f"| Allocated memory      |  {want // 1024} KiB |", r["summary"])
        self.assertEqual(r["after_free"], want - 50 * MIB)
        self.assertEqual(r["peak_before_reset"], want)
        self.assertEqual(r["peak_after_reset"], want - 50 * MIB)
        self.assertEqual(r["alloc_count_after_reset"], 0)

    def test_empty_cache_empties_cudallocs_cache(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "report")
            r = self.run_child("""
xs = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in (1000, 3 << 20, 50 << 20)]
del xs
before = torch.cuda.memory_reserved()
torch.cuda.empty_cache()
print(json.dumps({"before": before, "after": torch.cuda.memory_reserved(),
                  "frees": torch.cuda.memory_stats()["num_device_free"]}))
""", {"CUDALLOC_STANDIN_REPORT": path})
            counts = report(path)
        self.assertGreater(r["before"], 0)
        self.assertEqual(r["after"], 0)
        self.assertGreater(r["frees"], 0)
        if self.BACKEND == "cuda":
            # The defaults map pages of expandable segments (the stand-in has the VMM calls):
            # empty_cache unmaps and releases every one of them.
            self.assertGreater(counts["cuMemRelease"], 0, counts)
            self.assertEqual(counts["cuMemRelease"], counts["cuMemCreate"], counts)
            self.assertEqual(counts["used.0"], 0, "the driver holds nothing of cudalloc's")

    def test_memory_fraction_is_enforced(self):
        r = self.run_child("""
total = torch.cuda.get_device_properties(0).total_memory
torch.cuda.set_per_process_memory_fraction(0.25)
ok = torch.empty(total // 8, dtype=torch.uint8, device="cuda")
try:
    torch.empty(total // 3, dtype=torch.uint8, device="cuda")
    over = None
except torch.OutOfMemoryError as e:
    over = str(e)
frac = torch.cuda.get_per_process_memory_fraction()
torch.cuda.set_per_process_memory_fraction(1.0)
big = torch.empty(total // 3, dtype=torch.uint8, device="cuda")
print(json.dumps({"over": over, "frac": frac, "big": big.data_ptr()}))
""")
        self.assertIsNotNone(r["over"], "an allocation over the fraction succeeded")
        self.assertIn("cudalloc", r["over"])
        self.assertEqual(r["frac"], 0.25)
        self.assertNotEqual(r["big"], 0)

    def test_record_stream_reaches_cudalloc(self):
        code = """
s = torch.cuda.Stream()
x = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
if os.environ["RECORD"] == "1":
    x.record_stream(s)
del x
torch.cuda.synchronize()
y = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
print(json.dumps({"ok": y.data_ptr() != 0}))
"""
        counts = {}
        for record in ("0", "1"):
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "report")
                self.assertTrue(self.run_child(code, {"RECORD": record,
                                                      "CUDALLOC_STANDIN_REPORT": path})["ok"])
                counts[record] = report(path)
        if self.BACKEND == "cuda":
            # Freeing a block used on another stream records an event on that stream.
            self.assertGreater(counts["1"].get("cuEventRecord", 0),
                               counts["0"].get("cuEventRecord", 0), counts)

    def test_memory_history_and_snapshot_in_pytorchs_format(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "snap.pickle")
            r = self.run_child(f"""
torch.cuda.memory._record_memory_history(max_entries=1000)
x = torch.empty(3 << 20, dtype=torch.uint8, device="cuda")
ptr = x.data_ptr()
del x
snap = torch.cuda.memory._snapshot()
torch.cuda.memory._dump_snapshot({path!r})
torch.cuda.memory._record_memory_history(enabled=None)
y = torch.empty(7 << 20, dtype=torch.uint8, device="cuda")
after = torch.cuda.memory._snapshot()
print(json.dumps({{"ptr": ptr, "keys": sorted(snap),
                   "trace": [(e["action"], e["addr"], e["size"]) for e in snap["device_traces"][0]],
                   "segments": len(torch.cuda.memory_snapshot()),
                   "after": len(after["device_traces"][0])}}))
""")
            with open(path, "rb") as f:
                dumped = pickle.load(f)
        self.assertIn("segments", r["keys"])
        self.assertIn("device_traces", r["keys"])
        actions = [a for a, _, _ in r["trace"]]
        self.assertIn(["alloc", r["ptr"], 3 * MIB], [list(t) for t in r["trace"]])
        self.assertIn("free_completed", actions)
        self.assertGreater(r["segments"], 0)
        self.assertEqual(len(dumped["device_traces"][0]), len(r["trace"]))
        self.assertEqual(r["after"], len(r["trace"]), "recording stopped")

    def test_history_carries_the_python_stacks_pytorch_would_record(self):
        r = self.run_child("""
def make_a_tensor_for_cudalloc(n):
    return torch.empty(n, dtype=torch.uint8, device="cuda")

torch.cuda.memory._record_memory_history(max_entries=1000)
x = make_a_tensor_for_cudalloc(3 << 20)
kept = make_a_tensor_for_cudalloc(5 << 20)
ptr = x.data_ptr()
del x
snap = torch.cuda.memory._snapshot()
torch.cuda.memory._record_memory_history(enabled=None)
torch.cuda.memory._record_memory_history(max_entries=1000, stacks="cpp")
z = make_a_tensor_for_cudalloc(7 << 20)
plain = torch.cuda.memory._snapshot()
names = lambda fr: [f["name"] for f in fr]
print(json.dumps({
    "ptr": ptr, "kept": kept.data_ptr(), "z": z.data_ptr(),
    "trace": [(e["action"], e["addr"], names(e["frames"]), sorted(e))
              for e in snap["device_traces"][0]],
    "frame": next(f for e in snap["device_traces"][0] for f in e["frames"]),
    "blocks": {b["address"]: names(b["frames"]) for s in snap["segments"] for b in s["blocks"]
               if b["state"] == "active_allocated"},
    "plain": [(e["action"], e["addr"], e["frames"]) for e in plain["device_traces"][0]],
}))
""")
        alloc = [t for t in r["trace"] if t[0] == "alloc" and t[1] == r["ptr"]]
        self.assertEqual(len(alloc), 1, r["trace"])
        self.assertEqual(alloc[0][2][0], "make_a_tensor_for_cudalloc",
                         "innermost frame first, as PyTorch orders them")
        self.assertIn("<module>", alloc[0][2])
        self.assertNotIn("cudalloc_context", alloc[0][3])
        self.assertEqual(set(r["frame"]), {"filename", "line", "name"})
        self.assertEqual(r["frame"]["filename"], "<string>")
        self.assertGreater(r["frame"]["line"], 0)
        freed = [t for t in r["trace"] if t[0] == "free_requested" and t[1] == r["ptr"]]
        self.assertEqual(freed[0][2], ["<module>"], "the free's own stack")
        self.assertEqual(r["blocks"][str(r["kept"])][0], "make_a_tensor_for_cudalloc",
                         "a live block shows where it was allocated")
        later = [t for t in r["plain"] if t[0] == "alloc" and t[1] == r["z"]]
        self.assertEqual(later[0][2], [], "stacks='cpp' records no Python frames")

    def test_a_training_trace_replayed_as_tensors_leaves_exact_statistics(self):
        trace = os.path.join(ROOT, "traces", "cpu_bert_train.csv")
        with open(trace) as f:
            rows = [(r["action"], int(r["ptr"], 0), int(r["size"])) for r in csv.DictReader(f)]
        live, cur, peak, total, count, nallocs = {}, 0, 0, 0, 0, 0
        requested = 0
        for action, ptr, size in rows:
            if action == "alloc" and size > 0:
                live[ptr] = size
                cur += rounded(size)
                requested += size
                total += rounded(size)
                nallocs += 1
                peak = max(peak, cur)
            elif action == "free" and ptr in live:
                size = live.pop(ptr)
                cur -= rounded(size)
                requested -= size
        r = self.run_child("""
rows = json.load(sys.stdin)
live = {}
for action, ptr, size in rows:
    if action == "alloc" and size > 0:
        live[ptr] = torch.empty(size, dtype=torch.uint8, device="cuda")
    elif action == "free":
        live.pop(ptr, None)
print(json.dumps(torch.cuda.memory_stats()))
""", stdin=json.dumps(rows))
        self.assertEqual(r["allocation.all.current"], len(live))
        self.assertEqual(r["allocation.all.allocated"], nallocs)
        self.assertEqual(r["allocated_bytes.all.current"], cur)
        self.assertEqual(r["allocated_bytes.all.peak"], peak)
        self.assertEqual(r["allocated_bytes.all.allocated"], total)
        self.assertEqual(r["allocated_bytes.all.freed"], total - cur)
        self.assertEqual(r["requested_bytes.all.current"], requested)
        self.assertEqual(r["num_ooms"], 0)
        # The same events through `cudalloc replay` (its own simulated device): same peak.
        out = subprocess.run([os.environ["CUDALLOC_BIN"], "replay", "--json", trace],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        replay = json.loads(out.stdout.splitlines()[0])
        self.assertEqual(r["reserved_bytes.all.peak"], replay["peak_reserved"])
        self.assertEqual(r["num_device_alloc"], replay["device_allocs"])

    def test_graph_capture_and_mempool_are_refused_and_the_allocator_keeps_working(self):
        r = self.run_child("""
errors = {}
x = torch.empty(3 << 20, dtype=torch.uint8, device="cuda")
try:
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(torch.cuda.Stream()):
        g.capture_begin()
    errors["graph"] = None
except RuntimeError as e:
    errors["graph"] = str(e)
try:
    with torch.cuda.use_mem_pool(torch.cuda.MemPool()):
        torch.empty(100, device="cuda")
    errors["mempool"] = None
except RuntimeError as e:
    errors["mempool"] = str(e)
y = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
print(json.dumps({"errors": errors, "allocated": torch.cuda.memory_allocated(),
                  "distinct": x.data_ptr() != y.data_ptr()}))
""")
        self.assertIn("cudalloc does not support CUDA graph capture", r["errors"]["graph"] or "")
        # PyTorch's pluggable allocator refuses MemPool itself, before cudalloc is asked.
        self.assertIsNotNone(r["errors"]["mempool"])
        self.assertEqual(r["allocated"], 4 * MIB)
        self.assertTrue(r["distinct"])

    def test_base_allocation_names_the_segment(self):
        r = self.run_child("""
import ctypes
lib = cudalloc.load()
f = lib.cudalloc_base_allocation
f.restype = ctypes.c_void_p
f.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
small = [torch.empty(1000, dtype=torch.uint8, device="cuda") for _ in range(3)]
big = torch.empty(50 << 20, dtype=torch.uint8, device="cuda")
out = []
for t in small + [big]:
    n = ctypes.c_size_t(0)
    base = f(t.data_ptr(), ctypes.byref(n))
    out.append([t.data_ptr(), base, n.value])
n = ctypes.c_size_t(7)
unknown = f(12345, ctypes.byref(n))
segs = [(s["address"], s["total_size"]) for s in torch.cuda.memory_snapshot()]
print(json.dumps({"out": out, "unknown": unknown, "n": n.value, "segs": segs}))
""")
        segs = {tuple(s) for s in r["segs"]}
        bases = set()
        for ptr, base, size in r["out"]:
            self.assertIn((base, size), segs)
            self.assertLessEqual(base, ptr)
            self.assertLess(ptr, base + size)
            bases.add(base)
        self.assertEqual(len(bases), 2, "the small tensors share one 2 MiB segment")
        self.assertEqual(r["out"][0][2], 2 * MIB)
        self.assertIsNone(r["unknown"])
        self.assertEqual(r["n"], 7)

    def test_a_wrong_library_is_a_cudalloc_error(self):
        code = """
import os, sys, json
sys.path.insert(0, os.path.join(os.environ["CUDALLOC_ROOT"], "ffi", "python"))
import cudalloc
try:
    cudalloc.load()
    print(json.dumps({"err": None}))
except cudalloc.CudallocError as e:
    print(json.dumps({"err": str(e)}))
"""
        full = dict(os.environ, CUDALLOC_LIBRARY="/nonexistent/libcudalloc.so")
        out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("/nonexistent/libcudalloc.so", json.loads(out.stdout)["err"])


class PluginOnSimBackend(Plugin, unittest.TestCase):
    BACKEND = "sim"


class PluginOnCudaBackend(Plugin, unittest.TestCase):
    BACKEND = "cuda"


if __name__ == "__main__":
    unittest.main()
