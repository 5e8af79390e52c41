// cudalloc's PyTorch glue: installs libcudalloc.so as PyTorch's CUDA allocator through
// torch::cuda::CUDAPluggableAllocator, with the hooks PyTorch's Python API cannot set.
//
// Compiled by cudalloc/_glue.py against the headers of the torch that imports it (the C ABI of
// the pluggable allocator's setters is C++ only). It exists because a C function handed to
// PyTorch cannot report an error: a NULL from cudalloc_malloc is turned here into the C++
// exception PyTorch's own allocator throws (c10::OutOfMemoryError when cudalloc says out of
// memory, c10::Error otherwise), which torch's Python bindings raise as
// torch.OutOfMemoryError / RuntimeError with cudalloc's message. It must not allocate,
// count or decide anything itself: every call forwards to libcudalloc.so.
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>
#include <c10/util/Exception.h>

#include <sys/types.h>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>

namespace plug = torch::cuda::CUDAPluggableAllocator;

extern "C" {
// The libcudalloc.so functions the glue calls (ffi/include/cudalloc.h), passed in by address
// so the glue works with whichever library CUDALLOC_LIBRARY names.
struct cudalloc_torch_api {
  void* (*malloc)(ssize_t, int, cudaStream_t);
  void (*free)(void*, ssize_t, int, cudaStream_t);
  int (*record_stream_any)(void*, cudaStream_t);
  int (*empty_cache)(int);
  int (*set_memory_fraction)(double, int);
  const char* (*last_error)();
  int (*last_status)();
  void* (*base_allocation)(void*, size_t*);
};
}

namespace {

cudalloc_torch_api api{};
constexpr int kOutOfMemory = 5;  // CUDALLOC_ERROR_OUT_OF_MEMORY

[[noreturn]] void raise_last(const std::string& what) {
  const char* e = api.last_error();
  std::string msg = what + ": " + (e ? e : "unknown cudalloc error");
  if (api.last_status() == kOutOfMemory) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, msg);
  }
  TORCH_CHECK(false, msg);
}

}  // namespace

extern "C" {

// Install cudalloc as PyTorch's CUDA allocator. Returns 0, or -1 with a message in err.
int cudalloc_torch_install(const cudalloc_torch_api* a, char* err, size_t err_len) {
  try {
    api = *a;
    auto alloc = plug::createCustomAllocator(
        [](size_t size, int device, cudaStream_t stream) -> void* {
          void* p = api.malloc(static_cast<ssize_t>(size), device, stream);
          if (p == nullptr && size > 0) {
            raise_last("cudalloc could not allocate " + std::to_string(size) + " bytes");
          }
          return p;
        },
        [](void* p, size_t size, int device, cudaStream_t stream) {
          api.free(p, static_cast<ssize_t>(size), device, stream);
        });
    auto p = std::dynamic_pointer_cast<plug::CUDAPluggableAllocator>(alloc);
    TORCH_CHECK(p, "createCustomAllocator did not return a CUDAPluggableAllocator");
    p->set_record_stream_fn([](void* ptr, cudaStream_t stream) {
      if (api.record_stream_any(ptr, stream) != 0) raise_last("record_stream");
    });
    p->set_reset_fn([] {
      if (api.empty_cache(-1) != 0) raise_last("empty_cache");
    });
    p->set_memory_fraction_fn([](double fraction, int device) {
      if (api.set_memory_fraction(fraction, device) != 0) raise_last("set_memory_fraction");
    });
    p->set_base_alloc_fn([](void* ptr, size_t* size) -> void* {
      void* base = api.base_allocation(ptr, size);
      if (base == nullptr) raise_last("getBaseAllocation");
      return base;
    });
    // cudalloc keeps no private pools: a block freed inside a captured graph would be handed
    // out again outside it while the graph's replays still use it. Refuse, before capture
    // begins, rather than corrupt memory.
    p->set_begin_allocate_to_pool(
        [](int, c10::cuda::MempoolId_t, std::function<bool(cudaStream_t)>) {
          TORCH_CHECK(false,
                      "cudalloc does not support CUDA graph capture or torch.cuda.MemPool "
                      "(it has no private memory pools): memory allocated during capture "
                      "would be reused outside the graph. Capture without "
                      "cudalloc.install_pytorch() (PyTorch's own allocator).");
        });
    plug::changeCurrentAllocator(alloc);
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return -1;
  }
}

}  // extern "C"
