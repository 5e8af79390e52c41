// An unmodified CUDA program for the preload check of the GPU kit (scripts/gpu/run.sh):
// built there by nvcc with its default static cudart, it cudaMallocs and cudaFrees many
// blocks of mixed sizes, writes each with a kernel and reads one word back, and exits 0 only
// when every call succeeded and every value read back. Run under
// LD_PRELOAD=libcudalloc_preload.so, its allocations go through cudalloc's cache.
// It knows nothing of cudalloc: it must stay an ordinary CUDA program.
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

__global__ void fill(unsigned *p, size_t n, unsigned v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = v ^ (unsigned)i;
}

#define CHECK(call)                                                                      \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            std::fprintf(stderr, "malloc_loop: %s: %s\n", #call, cudaGetErrorString(e_)); \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

int main(int argc, char **argv) {
    int rounds = argc > 1 ? std::atoi(argv[1]) : 2000;
    const size_t sizes[] = {512, 4096, 100000, 1 << 20, 3 << 20, 12 << 20, 40 << 20};
    const int nsizes = sizeof sizes / sizeof sizes[0];
    void *live[8] = {0};
    for (int r = 0; r < rounds; r++) {
        int slot = r % 8;
        if (live[slot]) CHECK(cudaFree(live[slot]));
        size_t n = sizes[(r * 7 + r / 8) % nsizes];
        CHECK(cudaMalloc(&live[slot], n));
        unsigned *p = static_cast<unsigned *>(live[slot]);
        size_t words = n / 4;
        fill<<<(unsigned)((words + 255) / 256 > 1024 ? 1024 : (words + 255) / 256), 256>>>(
            p, words, (unsigned)r);
        CHECK(cudaGetLastError());
        unsigned last = 0;
        CHECK(cudaMemcpy(&last, p + words - 1, 4, cudaMemcpyDeviceToHost));
        if (last != ((unsigned)r ^ (unsigned)(words - 1))) {
            std::fprintf(stderr, "malloc_loop: round %d read back %u\n", r, last);
            return 1;
        }
    }
    for (void *p : live)
        if (p) CHECK(cudaFree(p));
    std::printf("malloc_loop: %d rounds PASS\n", rounds);
    return 0;
}
