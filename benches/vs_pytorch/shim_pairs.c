/* The preload shim's pair cost, for `cargo bench --bench vs_pytorch`: cached
 * cuMemAlloc_v2/cuMemFree_v2 pairs through the shim's hooks (the symbols this program links
 * against, which the preloaded shim interposes), against the same pairs straight into the
 * stand-in driver (its own definitions, found with glibc's real dlsym: the shim hooks dlsym).
 *
 * Usage: shim_pairs SIZES_FILE ROUNDS   (one size in bytes per line)
 * Prints, per path, the median ns per pair over ROUNDS interleaved rounds. Exit 0 = measured. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The driver entry points, as the preload test clients declare them. */
#include "driver_api.h"

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*free_fn)(CUdeviceptr);
typedef void *(*dlsym_fn)(void *, const char *);

static size_t sizes[4096];
static int nsizes;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* ns per pair over `reps` passes of the size mix; -1 on a failed call. */
static double pass(alloc_fn a, free_fn f, int reps) {
    double t0 = now_ns();
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < nsizes; i++) {
            CUdeviceptr p = 0;
            if (a(&p, sizes[i]) != 0 || p == 0 || f(p) != 0) {
                return -1;
            }
        }
    }
    return (now_ns() - t0) / ((double)reps * nsizes);
}

static int cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: shim_pairs SIZES_FILE ROUNDS\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "r");
    if (!in) {
        perror(argv[1]);
        return 2;
    }
    unsigned long long s;
    while (nsizes < 4096 && fscanf(in, "%llu", &s) == 1) {
        sizes[nsizes++] = (size_t)s;
    }
    fclose(in);
    int rounds = atoi(argv[2]);
    if (nsizes == 0 || rounds < 1 || rounds > 99) {
        fprintf(stderr, "shim_pairs: no sizes, or ROUNDS not in 1..99\n");
        return 2;
    }
    CUcontext ctx;
    int dev;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
        cuCtxSetCurrent(ctx)) {
        fprintf(stderr, "shim_pairs: the driver did not start\n");
        return 1;
    }
    dlsym_fn real_dlsym = (dlsym_fn)dlvsym(RTLD_DEFAULT, "dlsym", "GLIBC_2.34");
    if (!real_dlsym) {
        real_dlsym = (dlsym_fn)dlvsym(RTLD_DEFAULT, "dlsym", "GLIBC_2.2.5");
    }
    void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!real_dlsym || !driver) {
        fprintf(stderr, "shim_pairs: cannot find the driver's own symbols\n");
        return 1;
    }
    alloc_fn raw_alloc = (alloc_fn)real_dlsym(driver, "cuMemAlloc_v2");
    free_fn raw_free = (free_fn)real_dlsym(driver, "cuMemFree_v2");
    if (!raw_alloc || !raw_free || (void *)raw_alloc == (void *)cuMemAlloc_v2) {
        fprintf(stderr, "shim_pairs: the driver's own cuMemAlloc_v2 is not apart from the hook "
                        "(is the shim preloaded?)\n");
        return 1;
    }
    alloc_fn alloc[2] = {raw_alloc, cuMemAlloc_v2};
    free_fn freef[2] = {raw_free, cuMemFree_v2};
    /* Warm the cache, then size the passes to about 20 ms at the slower path's speed. */
    double probe = 0;
    for (int k = 0; k < 2; k++) {
        double t = pass(alloc[k], freef[k], 3);
        if (t < 0) {
            fprintf(stderr, "shim_pairs: a cuMemAlloc_v2/cuMemFree_v2 pair failed\n");
            return 1;
        }
        probe = t > probe ? t : probe;
    }
    int reps = (int)(20e6 / (probe * nsizes));
    reps = reps < 3 ? 3 : reps;
    double samples[2][99];
    for (int r = 0; r < rounds; r++) {
        for (int j = 0; j < 2; j++) {
            int k = (r + j) % 2;
            samples[k][r] = pass(alloc[k], freef[k], reps);
            if (samples[k][r] < 0) {
                fprintf(stderr, "shim_pairs: a cuMemAlloc_v2/cuMemFree_v2 pair failed\n");
                return 1;
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        qsort(samples[k], rounds, sizeof(double), cmp);
    }
    printf("raw %.1f\nshim %.1f\n", samples[0][rounds / 2], samples[1][rounds / 2]);
    return 0;
}
