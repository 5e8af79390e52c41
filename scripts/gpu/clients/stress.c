/* A C client of libcudalloc.so for the GPU kit (scripts/gpu/run.sh): THREADS threads, each
 * on its own stream (cuStreamCreate), allocate and free blocks of mixed sizes through
 * cudalloc_malloc/cudalloc_free, keeping up to LIVE blocks each.
 *
 * Two checks that no two live blocks overlap:
 *  - on the host, every live block is entered in one registry and checked against all
 *    others (runs anywhere, the stand-in CUDA included);
 *  - with a PTX file (kernels/tag.cu compiled by nvcc or NVRTC), each block is filled with
 *    cudalloc_fill_tag on its thread's stream right after allocation and checked with
 *    cudalloc_verify_tag before free (and poisoned), so a block another thread's fill
 *    overwrote is counted as mismatching words. With "-" instead of a PTX file (the stand-in
 *    runs no kernels) the kernel check is skipped with one line.
 *
 * The driver is reached through dlopen("libcuda.so.1"), so this builds with no CUDA at all.
 * Usage: stress PTX|- [THREADS [ITERATIONS]]. Exit status 0 only when every check passed.
 * It must not free or touch memory cudalloc did not hand it, except its one counter. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cudalloc.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream;

static CUresult (*p_cuInit)(unsigned);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, int);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuStreamCreate)(CUstream *, unsigned);
static CUresult (*p_cuStreamSynchronize)(CUstream);
static CUresult (*p_cuModuleLoadData)(CUmodule *, const void *);
static CUresult (*p_cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
static CUresult (*p_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, unsigned, unsigned, CUstream, void **, void **);
static CUresult (*p_cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*p_cuMemFree)(CUdeviceptr);
static CUresult (*p_cuMemsetD8)(CUdeviceptr, unsigned char, size_t);
static CUresult (*p_cuMemcpyDtoH)(void *, CUdeviceptr, size_t);

static CUcontext ctx;
static CUfunction k_fill, k_verify, k_poison;
static int use_kernels;
static CUdeviceptr mismatches; /* one device counter, every thread adds to it */

#define CHECK(call)                                                                  \
    do {                                                                             \
        CUresult r_ = (call);                                                        \
        if (r_ != 0) {                                                               \
            fprintf(stderr, "stress: %s failed: CUresult %d\n", #call, r_);        \
            exit(2);                                                                 \
        }                                                                            \
    } while (0)

static void *sym(void *lib, const char *name) {
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "stress: libcuda.so.1 lacks %s\n", name);
        exit(2);
    }
    return f;
}

/* ---- the host registry of live blocks ---- */
#define MAX_LIVE 4096
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t reg_lo[MAX_LIVE], reg_hi[MAX_LIVE];
static int reg_n;
static long host_overlaps;

static void reg_add(uintptr_t p, size_t n) {
    pthread_mutex_lock(&reg_lock);
    for (int i = 0; i < reg_n; i++)
        if (p < reg_hi[i] && reg_lo[i] < p + n) host_overlaps++;
    if (reg_n < MAX_LIVE) {
        reg_lo[reg_n] = p;
        reg_hi[reg_n] = p + n;
        reg_n++;
    }
    pthread_mutex_unlock(&reg_lock);
}

static void reg_remove(uintptr_t p) {
    pthread_mutex_lock(&reg_lock);
    for (int i = 0; i < reg_n; i++)
        if (reg_lo[i] == p) {
            reg_n--;
            reg_lo[i] = reg_lo[reg_n];
            reg_hi[i] = reg_hi[reg_n];
            break;
        }
    pthread_mutex_unlock(&reg_lock);
}

static void launch(CUfunction f, CUstream s, size_t words, void **args) {
    unsigned grid = (unsigned)((words + 255) / 256);
    if (grid > 1024) grid = 1024;
    if (grid == 0) grid = 1;
    CHECK(p_cuLaunchKernel(f, grid, 1, 1, 256, 1, 1, 0, s, args, NULL));
}

/* ---- one thread ---- */
#define LIVE 24
static int iterations = 2000;
static long failures;
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;

struct block { void *ptr; size_t size; unsigned long long owner; };

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t *s) {
    switch (next(s) % 10) {
    case 0: case 1: case 2: case 3: case 4: case 5: return 8 + next(s) % (1 << 20);
    case 6: case 7: case 8: return (1 << 20) + next(s) % (9 << 20);
    default: return (10 << 20) + next(s) % (30 << 20);
    }
}

static void release(struct block *b, CUstream s) {
    if (use_kernels) {
        unsigned long long words = b->size / 8;
        CUdeviceptr p = (CUdeviceptr)(uintptr_t)b->ptr;
        void *vargs[] = {&p, &words, &b->owner, &mismatches};
        launch(k_verify, s, words, vargs);
        void *pargs[] = {&p, &words};
        launch(k_poison, s, words, pargs);
    }
    reg_remove((uintptr_t)b->ptr);
    cudalloc_free(b->ptr, (ssize_t)b->size, 0, (cudaStream_t)s);
    b->ptr = NULL;
}

static void *worker(void *arg) {
    long id = (long)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ULL * (uint64_t)(id + 1);
    CUstream s;
    CHECK(p_cuCtxSetCurrent(ctx));
    CHECK(p_cuStreamCreate(&s, 1 /* non-blocking: no implicit sync with stream 0 */));
    struct block live[LIVE] = {{0}};
    unsigned long long serial = 0;
    for (int it = 0; it < iterations; it++) {
        struct block *b = &live[next(&seed) % LIVE];
        if (b->ptr) {
            release(b, s);
            continue;
        }
        b->size = pick_size(&seed);
        b->ptr = cudalloc_malloc((ssize_t)b->size, 0, (cudaStream_t)s);
        if (!b->ptr) {
            const char *e = cudalloc_last_error();
            fprintf(stderr, "stress: thread %ld: cudalloc_malloc(%zu): %s\n", id, b->size,
                    e ? e : "?");
            pthread_mutex_lock(&fail_lock);
            failures++;
            pthread_mutex_unlock(&fail_lock);
            continue;
        }
        b->owner = ((unsigned long long)id << 40) | ++serial;
        reg_add((uintptr_t)b->ptr, b->size);
        if (use_kernels) {
            unsigned long long words = b->size / 8;
            CUdeviceptr p = (CUdeviceptr)(uintptr_t)b->ptr;
            void *fargs[] = {&p, &words, &b->owner};
            launch(k_fill, s, words, fargs);
        }
    }
    for (int i = 0; i < LIVE; i++)
        if (live[i].ptr) release(&live[i], s);
    CHECK(p_cuStreamSynchronize(s));
    return NULL;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    buf[n] = 0;
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PTX|- [THREADS [ITERATIONS]]\n", argv[0]);
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 8;
    if (argc > 3) iterations = atoi(argv[3]);
    if (threads < 1 || threads > 64 || iterations < 1) {
        fprintf(stderr, "stress: 1..64 threads, at least one iteration\n");
        return 2;
    }
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) { fprintf(stderr, "stress: %s\n", dlerror()); return 2; }
    p_cuInit = sym(lib, "cuInit");
    p_cuDevicePrimaryCtxRetain = sym(lib, "cuDevicePrimaryCtxRetain");
    p_cuCtxSetCurrent = sym(lib, "cuCtxSetCurrent");
    p_cuStreamCreate = sym(lib, "cuStreamCreate");
    p_cuStreamSynchronize = sym(lib, "cuStreamSynchronize");
    CHECK(p_cuInit(0));
    CHECK(p_cuDevicePrimaryCtxRetain(&ctx, 0));
    CHECK(p_cuCtxSetCurrent(ctx));
    use_kernels = strcmp(argv[1], "-") != 0;
    if (use_kernels) {
        p_cuModuleLoadData = sym(lib, "cuModuleLoadData");
        p_cuModuleGetFunction = sym(lib, "cuModuleGetFunction");
        p_cuLaunchKernel = sym(lib, "cuLaunchKernel");
        p_cuMemAlloc = sym(lib, "cuMemAlloc_v2");
        p_cuMemFree = sym(lib, "cuMemFree_v2");
        p_cuMemsetD8 = sym(lib, "cuMemsetD8_v2");
        p_cuMemcpyDtoH = sym(lib, "cuMemcpyDtoH_v2");
        char *ptx = read_file(argv[1]);
        CUmodule m;
        CHECK(p_cuModuleLoadData(&m, ptx));
        free(ptx);
        CHECK(p_cuModuleGetFunction(&k_fill, m, "cudalloc_fill_tag"));
        CHECK(p_cuModuleGetFunction(&k_verify, m, "cudalloc_verify_tag"));
        CHECK(p_cuModuleGetFunction(&k_poison, m, "cudalloc_poison"));
        CHECK(p_cuMemAlloc(&mismatches, 8));
        CHECK(p_cuMemsetD8(mismatches, 0, 8));
    } else {
        printf("stress: tag kernels skipped (no PTX: the stand-in CUDA runs no kernels)\n");
    }
    pthread_t t[64];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    unsigned long long bad = 0;
    if (use_kernels) {
        CHECK(p_cuMemcpyDtoH(&bad, mismatches, 8));
        CHECK(p_cuMemFree(mismatches));
    }
    cudalloc_stats_t st;
    memset(&st, 0, sizeof st);
    if (cudalloc_get_stats(0, &st, sizeof st) != CUDALLOC_OK) {
        fprintf(stderr, "stress: cudalloc_get_stats: %s\n", cudalloc_last_error());
        return 1;
    }
    printf("stress: threads=%d iterations=%d kernels=%s mismatched_words=%llu "
           "host_overlaps=%ld failed_mallocs=%ld allocated_now=%lld reserved_peak=%lld "
           "device_allocs=%llu allocations=%lld\n",
           threads, iterations, use_kernels ? "on" : "skipped", bad, host_overlaps, failures,
           (long long)st.allocated_bytes[0].current, (long long)st.reserved_bytes[0].peak,
           (unsigned long long)st.num_device_alloc, (long long)st.allocation[0].allocated);
    int ok = bad == 0 && host_overlaps == 0 && failures == 0 &&
             st.allocated_bytes[0].current == 0 && st.allocation[0].allocated > 0;
    printf("stress: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
