// PyTorch's own caching allocator behind a C interface, for the `vs_pytorch` benchmark
// (benches/vs_pytorch.rs compiles this at bench time against the headers and libraries the
// torch wheel ships, and calls it through these functions, as it calls cudalloc's C ABI).
//
// This file only forwards to c10::cuda::CUDACachingAllocator; it must not time anything.
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <exception>

namespace alloc = c10::cuda::CUDACachingAllocator;

extern "C" {

// Initialise the native allocator for the visible devices (what torch's CUDA start-up does).
// Returns 0, or -1 with a message on stderr.
int torch_alloc_init() {
  try {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
      std::fprintf(stderr, "torch_alloc_init: no CUDA device\n");
      return -1;
    }
    alloc::init(n);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torch_alloc_init: %s\n", e.what());
    return -1;
  }
}

// A stream of the device's own (the runtime's), for the threads of the benchmark.
void* torch_alloc_stream() {
  cudaStream_t s = nullptr;
  return cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess ? s : nullptr;
}

// raw_alloc_with_stream; NULL on any error (out of memory included).
void* torch_alloc_malloc(size_t n, void* stream) {
  try {
    return alloc::raw_alloc_with_stream(n, static_cast<cudaStream_t>(stream));
  } catch (...) {
    return nullptr;
  }
}

void torch_alloc_free(void* p) {
  try {
    alloc::raw_delete(p);
  } catch (...) {
  }
}

// The allocator's name (c10's own, e.g. "native").
const char* torch_alloc_name() {
  static std::string name;
  try {
    name = alloc::name();
  } catch (...) {
    name = "unknown";
  }
  return name.c_str();
}
}
