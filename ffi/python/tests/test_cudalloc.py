"""Tests of the Python module against the simulated backend (no GPU needed).

Run: CUDALLOC_BACKEND=sim CUDALLOC_LIBRARY=target/debug/libcudalloc.so \
     python3 -m unittest discover -s ffi/python/tests -v
"""
import ctypes
import importlib.util
import os
import pickle
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import cudalloc  # noqa: E402


class Module(unittest.TestCase):
    def test_loads_and_finds_symbols(self):
        lib = cudalloc.load()
        for name in ("cudalloc_malloc", "cudalloc_free", "cudalloc_cupy_malloc", "cudalloc_cupy_free"):
            self.assertTrue(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value)
        self.assertRegex(cudalloc.version(), r"^\d+\.\d+\.\d+")

    def test_stats_summary_and_management(self):
        lib = cudalloc.load()
        p = lib.cudalloc_malloc(3 << 20, 0, None)
        self.assertTrue(p)
        s = cudalloc.memory_stats()
        self.assertEqual(s["allocation.all.current"], 1)
        self.assertEqual(s["allocated_bytes.large_pool.current"], 3 << 20)
        self.assertGreaterEqual(s["reserved_bytes.all.peak"], 3 << 20)
        self.assertIn("num_ooms", s)
        self.assertEqual(len([k for k in s if k.startswith("requested_bytes.")]), 12)
        lib.cudalloc_free(p, 3 << 20, 0, None)
        self.assertIn("memory summary", cudalloc.memory_summary())
        cudalloc.reset_peak_memory_stats()
        cudalloc.reset_accumulated_memory_stats()
        cudalloc.empty_cache()
        self.assertEqual(cudalloc.memory_stats()["reserved_bytes.all.current"], 0)

    def test_errors_raise_with_cudallocs_message(self):
        with self.assertRaisesRegex(cudalloc.CudallocError, "device 9"):
            cudalloc.memory_stats(9)
        with self.assertRaisesRegex(cudalloc.CudallocError, "fraction"):
            cudalloc.set_memory_fraction(3.0)
        lib = cudalloc.load()
        lib.cudalloc_free(0x1234, 0, 0, None)
        self.assertIn(b"not allocated by cudalloc", lib.cudalloc_last_error())

    def test_cupy_pair_and_snapshot(self):
        lib = cudalloc.load()
        p = lib.cudalloc_cupy_malloc(None, 4096, 0)
        self.assertTrue(p)
        lib.cudalloc_cupy_free(None, p, 0)
        cudalloc.record_history(True, 1000)
        q = lib.cudalloc_malloc(1000, 0, None)
        lib.cudalloc_free(q, 1000, 0, None)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "snap.pickle")
            cudalloc.dump_snapshot(path)
            with open(path, "rb") as f:
                snap = pickle.load(f)
        actions = [e["action"] for e in snap["device_traces"][0]]
        self.assertIn("alloc", actions)
        self.assertIn("free_completed", actions)

    @unittest.skipUnless(importlib.util.find_spec("torch"), "torch not installed")
    def test_install_pytorch(self):
        import torch

        if not torch.cuda.is_available():
            self.skipTest("no CUDA device: PyTorch cannot load a CUDA allocator here")
        cudalloc.install_pytorch()

    @unittest.skipUnless(importlib.util.find_spec("cupy"), "cupy not installed")
    def test_install_cupy(self):
        cudalloc.install_cupy()


if __name__ == "__main__":
    unittest.main()
