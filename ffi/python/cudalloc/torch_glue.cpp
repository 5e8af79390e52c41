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
//
// The one thing it keeps is call stacks, which libcudalloc.so cannot see: while
// _record_memory_history(stacks="python"|"all") is on, each malloc and free gathers the Python
// stack (torch::CapturedTraceback, what PyTorch's own allocator records), files it under a
// new id and tells libcudalloc.so the id for the history entries the call records. A snapshot
// then asks for the frames of the ids it holds (cudalloc_torch_frames). The newest
// max_entries stacks are kept, as many as the history keeps entries.
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>
#include <torch/csrc/profiler/combined_traceback.h>
#include <c10/util/Exception.h>

#include <sys/types.h>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

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
  void (*set_history_context)(uint64_t);
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

// Python stacks of recent calls, by id (see the top of the file).
struct Stacks {
  std::atomic<bool> on{false};
  std::mutex mu;
  std::unordered_map<uint64_t, std::shared_ptr<torch::CapturedTraceback>> by_id;
  std::deque<uint64_t> order;
  size_t max = 0;
  uint64_t next = 1;
};
Stacks stacks;

// Gather this thread's Python stack and tell libcudalloc.so its id for the entries the next
// call records; 0 (and nothing kept) when stacks are off or none can be gathered.
uint64_t begin_context() {
  if (!stacks.on.load(std::memory_order_relaxed)) return 0;
  auto tb = torch::CapturedTraceback::gather(/*python=*/true, /*script=*/false, /*cpp=*/false);
  if (!tb) return 0;
  uint64_t id;
  {
    std::lock_guard<std::mutex> g(stacks.mu);
    id = stacks.next++;
    stacks.by_id.emplace(id, std::move(tb));
    stacks.order.push_back(id);
    while (stacks.order.size() > stacks.max) {
      stacks.by_id.erase(stacks.order.front());
      stacks.order.pop_front();
    }
  }
  api.set_history_context(id);
  return id;
}

void end_context(uint64_t id) {
  if (id != 0) api.set_history_context(0);
}

}  // namespace

extern "C" {

// Start (max_entries > 0) or stop keeping Python stacks for the history.
void cudalloc_torch_set_stacks(size_t max_entries) {
  std::lock_guard<std::mutex> g(stacks.mu);
  stacks.max = max_entries;
  if (max_entries == 0) {
    stacks.by_id.clear();
    stacks.order.clear();
  }
  stacks.on.store(max_entries > 0, std::memory_order_relaxed);
}

// The frames of the stacks `ids` (n of them), innermost first, written to out as text: for
// each id a line "#ID", then one line per frame "LINE\tNAME\tFILENAME" (an id no longer
// kept has no frame lines). Returns the bytes needed with the final NUL: with cap smaller
// than that, out is left unterminated and the caller asks again with more room. Must be
// called holding the GIL (symbolizing reads Python code objects): ctypes.PyDLL does.
size_t cudalloc_torch_frames(const uint64_t* ids, size_t n, char* out, size_t cap) {
  try {
    std::vector<uint64_t> found;
    std::vector<std::shared_ptr<torch::CapturedTraceback>> keep;
    {
      std::lock_guard<std::mutex> g(stacks.mu);
      for (size_t i = 0; i < n; i++) {
        auto it = stacks.by_id.find(ids[i]);
        if (it != stacks.by_id.end()) {
          found.push_back(ids[i]);
          keep.push_back(it->second);
        }
      }
    }
    std::vector<torch::CapturedTraceback*> raw;
    for (auto& k : keep) raw.push_back(k.get());
    auto sym = torch::symbolize(raw);
    std::string text;
    for (size_t i = 0; i < found.size(); i++) {
      text += "#" + std::to_string(found[i]) + "\n";
      for (uint64_t f : sym.tracebacks[i]) {
        const auto& fr = sym.all_frames[f];
        text += std::to_string(fr.lineno) + "\t" + fr.funcname + "\t" + fr.filename + "\n";
      }
    }
    if (text.size() + 1 <= cap) std::memcpy(out, text.c_str(), text.size() + 1);
    return text.size() + 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cudalloc: symbolizing Python stacks failed: %s\n", e.what());
    if (cap > 0) out[0] = 0;
    return 1;
  }
}

// Install cudalloc as PyTorch's CUDA allocator. Returns 0, or -1 with a message in err.
int cudalloc_torch_install(const cudalloc_torch_api* a, char* err, size_t err_len) {
  try {
    api = *a;
    auto alloc = plug::createCustomAllocator(
        [](size_t size, int device, cudaStream_t stream) -> void* {
          uint64_t ctx = begin_context();
          void* p = api.malloc(static_cast<ssize_t>(size), device, stream);
          end_context(ctx);
          if (p == nullptr && size > 0) {
            raise_last("cudalloc could not allocate " + std::to_string(size) + " bytes");
          }
          return p;
        },
        [](void* p, size_t size, int device, cudaStream_t stream) {
          uint64_t ctx = begin_context();
          api.free(p, static_cast<ssize_t>(size), device, stream);
          end_context(ctx);
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
