/* Cached malloc+free pair cost for the GPU kit (scripts/gpu/run.sh, part 4), in one run:
 * cudalloc's C ABI (cudalloc_malloc/cudalloc_free of libcudalloc.so, what the PyTorch
 * plug-in calls), PyTorch's raw_alloc_with_stream/raw_delete (through the C interface of
 * benches/vs_pytorch/torch_alloc.cpp, when PAIRS_TORCH_LIB names it built), raw
 * cuMemAlloc/cuMemFree, and cuMemAllocAsync/cuMemFreeAsync (the driver's
 * stream-ordered pool, what PyTorch's backend:cudaMallocAsync uses), on 1, 2, 4, 8 and 16
 * threads, each thread on its own stream, the same size mix for every engine. Each figure is
 * the median over ROUNDS rounds (engines interleaved within a round) of ns per pair per
 * thread, after a warm-up pass; one line per (engine, threads) and the ratios to cudalloc.
 *
 * Usage: pairs [PAIRS [ROUNDS [MAX_THREADS]]]. It must not judge the figures; it fails only
 * when an allocation fails. The driver is reached through dlopen("libcuda.so.1"). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cudalloc.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *CUcontext, *CUstream;

static CUresult (*p_cuInit)(unsigned);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, int);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuStreamCreate)(CUstream *, unsigned);
static CUresult (*p_cuStreamSynchronize)(CUstream);
static CUresult (*p_cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*p_cuMemFree)(CUdeviceptr);
static CUresult (*p_cuMemAllocAsync)(CUdeviceptr *, size_t, CUstream);
static CUresult (*p_cuMemFreeAsync)(CUdeviceptr, CUstream);

static CUcontext ctx;
static int pairs = 20000;
/* Small-pool sizes as in a transformer's step (bytes). */
static const size_t SIZES[] = {512, 2048, 8192, 65536, 262144, 1048576, 4096, 131072};
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

enum engine { CUDALLOC, TORCH, CUMEMALLOC, CUMEMALLOCASYNC, NENGINES };
static const char *NAMES[] = {"cudalloc C ABI", "torch raw_alloc", "cuMemAlloc",
                              "cuMemAllocAsync"};
static void *(*p_torch_malloc)(size_t, void *);
static void (*p_torch_free)(void *);

struct job { enum engine e; CUstream s; pthread_barrier_t *go; double ns; int failed; };

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int pass(enum engine e, CUstream s, int n) {
    for (int i = 0; i < n; i++) {
        size_t size = SIZES[i % NSIZES];
        if (e == CUDALLOC) {
            void *p = cudalloc_malloc((ssize_t)size, 0, (cudaStream_t)s);
            if (!p) return 1;
            cudalloc_free(p, (ssize_t)size, 0, (cudaStream_t)s);
        } else if (e == TORCH) {
            void *p = p_torch_malloc(size, s);
            if (!p) return 1;
            p_torch_free(p);
        } else if (e == CUMEMALLOC) {
            CUdeviceptr p;
            if (p_cuMemAlloc(&p, size) != 0 || p_cuMemFree(p) != 0) return 1;
        } else {
            CUdeviceptr p;
            if (p_cuMemAllocAsync(&p, size, s) != 0 || p_cuMemFreeAsync(p, s) != 0) return 1;
        }
    }
    return 0;
}

static void *run(void *arg) {
    struct job *j = arg;
    p_cuCtxSetCurrent(ctx);
    pthread_barrier_wait(j->go);
    double t0 = now_ns();
    j->failed = pass(j->e, j->s, pairs);
    if (j->e == CUMEMALLOCASYNC) p_cuStreamSynchronize(j->s);
    j->ns = (now_ns() - t0) / pairs;
    return NULL;
}

static CUstream streams[16];

/* ns per pair per thread of one engine on `threads` threads (the slowest thread's). */
static double timed(enum engine e, int threads, int *failed) {
    pthread_t t[16];
    struct job jobs[16];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        jobs[i] = (struct job){e, streams[i], &go, 0, 0};
        pthread_create(&t[i], NULL, run, &jobs[i]);
    }
    double worst = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        *failed |= jobs[i].failed;
        if (jobs[i].ns > worst) worst = jobs[i].ns;
    }
    pthread_barrier_destroy(&go);
    return worst;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc > 1) pairs = atoi(argv[1]);
    int rounds = argc > 2 ? atoi(argv[2]) : 9;
    int max_threads = argc > 3 ? atoi(argv[3]) : 16;
    if (pairs < 1 || rounds < 1 || rounds > 99 || max_threads < 1 || max_threads > 16) {
        fprintf(stderr, "usage: %s [PAIRS [ROUNDS<=99 [MAX_THREADS<=16]]]\n", argv[0]);
        return 2;
    }
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) { fprintf(stderr, "pairs: %s\n", dlerror()); return 2; }
#define SYM(v, name) if (!(*(void **)&v = dlsym(lib, name))) { fprintf(stderr, "pairs: no %s\n", name); return 2; }
    SYM(p_cuInit, "cuInit");
    SYM(p_cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    SYM(p_cuCtxSetCurrent, "cuCtxSetCurrent");
    SYM(p_cuStreamCreate, "cuStreamCreate");
    SYM(p_cuStreamSynchronize, "cuStreamSynchronize");
    SYM(p_cuMemAlloc, "cuMemAlloc_v2");
    SYM(p_cuMemFree, "cuMemFree_v2");
    SYM(p_cuMemAllocAsync, "cuMemAllocAsync");
    SYM(p_cuMemFreeAsync, "cuMemFreeAsync");
    if (p_cuInit(0) || p_cuDevicePrimaryCtxRetain(&ctx, 0) || p_cuCtxSetCurrent(ctx)) {
        fprintf(stderr, "pairs: no CUDA device\n");
        return 2;
    }
    for (int i = 0; i < 16; i++)
        if (p_cuStreamCreate(&streams[i], 1)) { fprintf(stderr, "pairs: cuStreamCreate\n"); return 2; }
    int engines[NENGINES], nengines = 0;
    engines[nengines++] = CUDALLOC;
    const char *torch = getenv("PAIRS_TORCH_LIB");
    if (torch && *torch) {
        void *t = dlopen(torch, RTLD_NOW);
        int (*init)(void) = t ? (int (*)(void))dlsym(t, "torch_alloc_init") : NULL;
        if (!init || init() != 0) {
            fprintf(stderr, "pairs: %s: %s\n", torch, t ? "torch_alloc_init failed" : dlerror());
            return 2;
        }
        *(void **)&p_torch_malloc = dlsym(t, "torch_alloc_malloc");
        *(void **)&p_torch_free = dlsym(t, "torch_alloc_free");
        if (!p_torch_malloc || !p_torch_free) { fprintf(stderr, "pairs: %s lacks symbols\n", torch); return 2; }
        engines[nengines++] = TORCH;
    } else {
        printf("pairs: PyTorch's raw_alloc skipped (PAIRS_TORCH_LIB unset)\n");
    }
    engines[nengines++] = CUMEMALLOC;
    engines[nengines++] = CUMEMALLOCASYNC;
    int failed = 0;
    printf("pairs: %d pairs per thread, median of %d rounds, ns per pair per thread\n", pairs, rounds);
    printf("%-16s %7s %10s %12s\n", "engine", "threads", "ns/pair", "vs cudalloc");
    for (int threads = 1; threads <= max_threads; threads *= 2) {
        double med[NENGINES];
        for (int i = 0; i < nengines; i++) {
            timed((enum engine)engines[i], threads, &failed); /* warm-up: fills every cache */
        }
        double samples[NENGINES][99];
        for (int r = 0; r < rounds; r++)
            for (int i = 0; i < nengines; i++)
                samples[i][r] = timed((enum engine)engines[i], threads, &failed);
        for (int i = 0; i < nengines; i++) {
            qsort(samples[i], (size_t)rounds, sizeof(double), cmp);
            med[i] = samples[i][rounds / 2];
        }
        for (int i = 0; i < nengines; i++)
            printf("%-16s %7d %10.1f %11.2fx\n", NAMES[engines[i]], threads, med[i], med[i] / med[0]);
    }
    if (failed) { fprintf(stderr, "pairs: an allocation failed\n"); return 1; }
    return 0;
}
