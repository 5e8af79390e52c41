/* The stand-in CUDA driver, libcuda.so.1: one model of a device with no compute, for running
 * cudalloc's CudaBackend, its LD_PRELOAD shim and real PyTorch on machines with no GPU.
 *
 * Device memory is address space only: allocations are host mappings made with
 * MAP_NORESERVE that the stand-in never touches (a client that writes through a pointer gets
 * host pages, which is what cudalloc's own tests use to tag blocks). Streams and events
 * complete at once. Virtual memory (cuMemAddressReserve, cuMemCreate, cuMemMap, ...) works at
 * a 2 MiB granularity; a physical handle is a size charged against the capacity. Kernel
 * launches and copies are not here: they are refused by the runtime (cudart.c).
 *
 * Configured through the environment:
 *   CUDALLOC_STANDIN_CAPACITY  bytes per device, with an optional KiB/MiB/GiB/TiB suffix
 *                              (default 1 GiB); beyond it allocations fail with
 *                              CUDA_ERROR_OUT_OF_MEMORY
 *   CUDALLOC_STANDIN_DEVICES   number of devices (default 1, at most 64)
 *   CUDALLOC_STANDIN_REPORT    at exit, "name=count" lines of every counted call, then the
 *                              peak and final bytes in use, are written to this file
 *                              ("stderr": one summary line on stderr), by a process that
 *                              made at least one counted call
 *   CUDALLOC_STANDIN_LOG       when set, allocations, frees and entry points asked for but
 *                              missing are logged to stderr
 *   CUDALLOC_STANDIN_UNKNOWN_FREE_STATUS  the status a free of an unknown pointer returns
 *                              (default CUDA_ERROR_INVALID_VALUE), for tests of statuses newer
 *                              than a caller's bindings
 * This file holds the only device state of the stand-in; it must not launch, copy or touch
 * device memory. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "standin.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUstream;
typedef void *CUevent;

enum {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    NOT_SUPPORTED = 801,
};

#define EXPORT STANDIN_EXPORT
#define MAX_DEVICES 64

/* ---- call counters ---- */
static const char *const NAMES[C_COUNT] = {
#define STANDIN_NAME(name) #name,
    STANDIN_COUNTERS(STANDIN_NAME)
#undef STANDIN_NAME
};
static unsigned long long counts[C_COUNT];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void count(int which) { __atomic_fetch_add(&counts[which], 1, __ATOMIC_RELAXED); }
EXPORT void standin_count_add(int which) {
    if (which >= 0 && which < C_COUNT) count(which);
}
/* Number of calls of one entry point (by the names above), -1 if unknown. */
EXPORT long long standin_count(const char *name) {
    for (int i = 0; i < C_COUNT; i++)
        if (strcmp(NAMES[i], name) == 0) return (long long)__atomic_load_n(&counts[i], __ATOMIC_RELAXED);
    return -1;
}

/* ---- configuration ---- */
static size_t parse_size(const char *v, size_t dflt) {
    if (!v || !*v) return dflt;
    char *end = NULL;
    double n = strtod(v, &end);
    if (end == v || n < 0) return dflt;
    while (*end == ' ') end++;
    double mult = 1;
    if (!strcasecmp(end, "k") || !strcasecmp(end, "kib") || !strcasecmp(end, "kb")) mult = 1024.0;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib") || !strcasecmp(end, "mb")) mult = 1048576.0;
    else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib") || !strcasecmp(end, "gb")) mult = 1073741824.0;
    else if (!strcasecmp(end, "t") || !strcasecmp(end, "tib") || !strcasecmp(end, "tb")) mult = 1099511627776.0;
    else if (*end) return dflt;
    return (size_t)(n * mult);
}
EXPORT int standin_device_count(void) {
    const char *v = getenv("CUDALLOC_STANDIN_DEVICES");
    int n = v && *v ? atoi(v) : 1;
    return n < 1 ? 1 : (n > MAX_DEVICES ? MAX_DEVICES : n);
}
EXPORT size_t standin_capacity(void) {
    return parse_size(getenv("CUDALLOC_STANDIN_CAPACITY"), (size_t)1 << 30);
}
static int logging(void) { return getenv("CUDALLOC_STANDIN_LOG") != NULL; }

/* ---- devices and contexts ---- */
static size_t used[MAX_DEVICES], peak[MAX_DEVICES];
static int primary_active[MAX_DEVICES];
static int initialized;
static __thread int current_ctx; /* 0: none, else device + 1 */

EXPORT int standin_current_device(void) { return current_ctx ? current_ctx - 1 : 0; }
EXPORT void standin_set_current_device(int dev) {
    if (dev >= 0 && dev < standin_device_count()) {
        current_ctx = dev + 1;
        __atomic_store_n(&primary_active[dev], 1, __ATOMIC_RELAXED);
    }
}
EXPORT size_t standin_used(int dev) {
    if (dev < 0 || dev >= MAX_DEVICES) return 0;
    pthread_mutex_lock(&mu);
    size_t u = used[dev];
    pthread_mutex_unlock(&mu);
    return u;
}
/* Charge n bytes to a device; 0 if they do not fit. Called with mu held. */
static int charge(int dev, size_t n) {
    if (used[dev] + n > standin_capacity() || used[dev] + n < used[dev]) return 0;
    used[dev] += n;
    if (used[dev] > peak[dev]) peak[dev] = used[dev];
    return 1;
}

EXPORT CUresult cuInit(unsigned flags) {
    (void)flags;
    count(C_cuInit);
    initialized = 1;
    return SUCCESS;
}
EXPORT CUresult cuDriverGetVersion(int *v) {
    count(C_cuDriverGetVersion);
    if (!v) return INVALID_VALUE;
    *v = 13000;
    return SUCCESS;
}
EXPORT CUresult cuDeviceGetCount(int *n) {
    count(C_cuDeviceGetCount);
    if (!initialized) return NOT_INITIALIZED;
    if (!n) return INVALID_VALUE;
    *n = standin_device_count();
    return SUCCESS;
}
EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    count(C_cuDeviceGet);
    if (!d) return INVALID_VALUE;
    if (ordinal < 0 || ordinal >= standin_device_count()) return INVALID_DEVICE;
    *d = ordinal;
    return SUCCESS;
}
static int valid_device(CUdevice d) { return d >= 0 && d < standin_device_count(); }
EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    if (!name || len <= 0) return INVALID_VALUE;
    if (!valid_device(d)) return INVALID_DEVICE;
    snprintf(name, (size_t)len, "cudalloc stand-in device (no compute)");
    return SUCCESS;
}
EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    if (!bytes) return INVALID_VALUE;
    if (!valid_device(d)) return INVALID_DEVICE;
    *bytes = standin_capacity();
    return SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid(unsigned char *uuid, CUdevice d) {
    if (!uuid) return INVALID_VALUE;
    if (!valid_device(d)) return INVALID_DEVICE;
    memset(uuid, 0, 16);
    memcpy(uuid, "cudalloc-stdin", 14);
    uuid[15] = (unsigned char)d;
    return SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid_v2(unsigned char *uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

/* Attribute values of an H100/H200-class device (compute capability 9.0), by the driver's
 * CUdevice_attribute numbers; attributes not listed read 0. */
static int attribute(int attr, CUdevice d) {
    switch (attr) {
    case 1: return 1024;          /* max threads per block */
    case 2: case 3: return 1024;  /* max block dim x, y */
    case 4: return 64;            /* max block dim z */
    case 5: return 2147483647;    /* max grid dim x */
    case 6: case 7: return 65535; /* max grid dim y, z */
    case 8: return 49152;         /* shared memory per block */
    case 9: return 65536;         /* total constant memory */
    case 10: return 32;           /* warp size */
    case 12: return 65536;        /* registers per block */
    case 13: return 1980000;      /* clock rate (kHz) */
    case 16: return 132;          /* multiprocessors */
    case 19: return 1;            /* can map host memory */
    case 31: return 1;            /* concurrent kernels */
    case 33: return d + 1;        /* PCI bus id */
    case 34: return 0;            /* PCI device id */
    case 36: return 2619000;      /* memory clock (kHz) */
    case 37: return 5120;         /* memory bus width */
    case 38: return 52428800;     /* L2 cache */
    case 39: return 2048;         /* max threads per multiprocessor */
    case 40: return 2;            /* async engines */
    case 41: return 1;            /* unified addressing */
    case 75: return 9;            /* compute capability major */
    case 76: return 0;            /* minor */
    case 81: return 233472;       /* shared memory per multiprocessor */
    case 82: return 65536;        /* registers per multiprocessor */
    case 83: return 1;            /* managed memory */
    case 97: return 232448;       /* shared memory per block, opt-in */
    case 102: return 1;           /* virtual memory management supported */
    case 106: return 32;          /* max blocks per multiprocessor */
    default: return 0;
    }
}
EXPORT CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d) {
    count(C_cuDeviceGetAttribute);
    if (!v) return INVALID_VALUE;
    if (!valid_device(d)) return INVALID_DEVICE;
    *v = attribute(attr, d);
    return SUCCESS;
}

/* A context handle is the device index + 1 disguised as a pointer. */
EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice d) {
    count(C_cuDevicePrimaryCtxRetain);
    if (!ctx) return INVALID_VALUE;
    if (!valid_device(d)) return INVALID_DEVICE;
    __atomic_store_n(&primary_active[d], 1, __ATOMIC_RELAXED);
    *ctx = (CUcontext)(uintptr_t)(d + 1);
    return SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    count(C_cuDevicePrimaryCtxRelease);
    return valid_device(d) ? SUCCESS : INVALID_DEVICE;
}
EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice d) { return cuDevicePrimaryCtxRelease_v2(d); }
EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned *flags, int *active) {
    if (!flags || !active) return INVALID_VALUE;
    if (!valid_device(d)) return INVALID_DEVICE;
    *flags = 0;
    *active = __atomic_load_n(&primary_active[d], __ATOMIC_RELAXED);
    return SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice d, unsigned flags) {
    (void)flags;
    return valid_device(d) ? SUCCESS : INVALID_DEVICE;
}
EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    count(C_cuCtxSetCurrent);
    uintptr_t c = (uintptr_t)ctx;
    if (c > (uintptr_t)standin_device_count()) return INVALID_CONTEXT;
    current_ctx = (int)c;
    return SUCCESS;
}
EXPORT CUresult cuCtxGetCurrent(CUcontext *ctx) {
    count(C_cuCtxGetCurrent);
    if (!ctx) return INVALID_VALUE;
    *ctx = (CUcontext)(uintptr_t)current_ctx;
    return SUCCESS;
}
EXPORT CUresult cuCtxGetDevice(CUdevice *d) {
    count(C_cuCtxGetDevice);
    if (!d) return INVALID_VALUE;
    if (!current_ctx) return INVALID_CONTEXT;
    *d = current_ctx - 1;
    return SUCCESS;
}
/* A short per-thread stack of contexts under the current one. */
static __thread int ctx_stack[16], ctx_depth;
EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    uintptr_t c = (uintptr_t)ctx;
    if (c == 0 || c > (uintptr_t)standin_device_count()) return INVALID_CONTEXT;
    if (ctx_depth == 16) return INVALID_VALUE;
    ctx_stack[ctx_depth++] = current_ctx;
    current_ctx = (int)c;
    return SUCCESS;
}
EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *ctx) {
    if (current_ctx == 0) return INVALID_CONTEXT;
    if (ctx) *ctx = (CUcontext)(uintptr_t)current_ctx;
    current_ctx = ctx_depth > 0 ? ctx_stack[--ctx_depth] : 0;
    return SUCCESS;
}
EXPORT CUresult cuCtxSynchronize(void) {
    count(C_cuCtxSynchronize);
    return current_ctx ? SUCCESS : INVALID_CONTEXT;
}

/* ---- device memory: a hash table of allocations by base address ---- */
#define BUCKETS 4096
struct alloc { CUdeviceptr ptr; size_t size, mapped; int dev; struct alloc *next; };
static struct alloc *table[BUCKETS];
static size_t live_allocs;
static size_t bucket(CUdeviceptr p) { return (size_t)((p >> 9) * 0x9E3779B97F4A7C15ull >> 52) % BUCKETS; }

/* A fresh host mapping of n bytes, aligned to `align` (a power of two >= the page size);
 * *mapped receives the length to unmap. NULL when the address space is exhausted. */
static void *map_aligned(size_t n, size_t align, int prot, size_t *mapped) {
    size_t len = (n + 4095) & ~(size_t)4095;
    char *m = mmap(NULL, len + align, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return NULL;
    uintptr_t start = (uintptr_t)m, aligned = (start + align - 1) & ~(uintptr_t)(align - 1);
    if (aligned > start) munmap(m, aligned - start);
    uintptr_t end = start + len + align;
    if (end > aligned + len) munmap((void *)(aligned + len), end - aligned - len);
    *mapped = len;
    return (void *)aligned;
}

static CUresult do_alloc(CUdeviceptr *p, size_t n) {
    if (!p || n == 0) return INVALID_VALUE;
    int dev = standin_current_device();
    pthread_mutex_lock(&mu);
    int ok = charge(dev, n);
    pthread_mutex_unlock(&mu);
    if (!ok) return OUT_OF_MEMORY;
    size_t mapped = 0;
    void *mem = map_aligned(n, n >= ((size_t)2 << 20) ? (size_t)2 << 20 : 4096, PROT_READ | PROT_WRITE, &mapped);
    struct alloc *a = mem ? malloc(sizeof *a) : NULL;
    if (!a) {
        if (mem) munmap(mem, mapped);
        pthread_mutex_lock(&mu);
        used[dev] -= n;
        pthread_mutex_unlock(&mu);
        return OUT_OF_MEMORY;
    }
    a->ptr = (CUdeviceptr)(uintptr_t)mem;
    a->size = n;
    a->mapped = mapped;
    a->dev = dev;
    pthread_mutex_lock(&mu);
    size_t b = bucket(a->ptr);
    a->next = table[b];
    table[b] = a;
    live_allocs++;
    pthread_mutex_unlock(&mu);
    if (logging()) fprintf(stderr, "cudalloc stand-in: alloc %zu -> %p\n", n, mem);
    *p = a->ptr;
    return SUCCESS;
}
static CUresult do_free(CUdeviceptr p) {
    pthread_mutex_lock(&mu);
    for (struct alloc **pp = &table[bucket(p)]; *pp; pp = &(*pp)->next) {
        if ((*pp)->ptr == p) {
            struct alloc *a = *pp;
            *pp = a->next;
            used[a->dev] -= a->size;
            live_allocs--;
            pthread_mutex_unlock(&mu);
            if (logging()) fprintf(stderr, "cudalloc stand-in: free %p\n", (void *)(uintptr_t)p);
            munmap((void *)(uintptr_t)a->ptr, a->mapped);
            free(a);
            return SUCCESS;
        }
    }
    pthread_mutex_unlock(&mu);
    const char *odd = getenv("CUDALLOC_STANDIN_UNKNOWN_FREE_STATUS");
    return odd && *odd ? (CUresult)atoi(odd) : INVALID_VALUE;
}
/* Allocate without going through any exported entry point (and without counting a
 * cuMemAlloc call): memory a cache never saw, for "unknown pointer" tests. */
EXPORT CUdeviceptr standin_raw_alloc(size_t n) {
    CUdeviceptr p = 0;
    return do_alloc(&p, n) == SUCCESS ? p : 0;
}
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    count(C_cuMemAlloc);
    return do_alloc(p, n);
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
    count(C_cuMemFree);
    if (p == 0) return SUCCESS;
    return do_free(p);
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s) {
    (void)s;
    count(C_cuMemAllocAsync);
    return do_alloc(p, n);
}
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, CUstream s) { return cuMemAllocAsync(p, n, s); }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    (void)s;
    count(C_cuMemFreeAsync);
    return do_free(p);
}
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { return cuMemFreeAsync(p, s); }
EXPORT CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total) {
    count(C_cuMemGetInfo);
    if (!free_b || !total) return INVALID_VALUE;
    int dev = standin_current_device();
    size_t cap = standin_capacity();
    pthread_mutex_lock(&mu);
    *total = cap;
    *free_b = used[dev] < cap ? cap - used[dev] : 0;
    pthread_mutex_unlock(&mu);
    return SUCCESS;
}

/* ---- virtual memory: reserved ranges are PROT_NONE host mappings; a "physical" handle
 * is a size charged against the capacity; mapping makes the pages read-write. ---- */
#define GRAN ((size_t)2 << 20)
struct phys { unsigned magic; size_t size; int dev; };
#define PHYS_MAGIC 0xF00DF00Du
struct range { CUdeviceptr base; size_t size; int dev; struct range *next; };
static struct range *ranges;

EXPORT CUresult cuMemGetAllocationGranularity(size_t *g, const void *prop, int option) {
    (void)prop;
    (void)option;
    count(C_cuMemGetAllocationGranularity);
    if (!g) return INVALID_VALUE;
    *g = GRAN;
    return SUCCESS;
}
EXPORT CUresult cuMemAddressReserve(CUdeviceptr *p, size_t size, size_t align, CUdeviceptr addr,
                                    unsigned long long flags) {
    (void)addr;
    (void)flags;
    count(C_cuMemAddressReserve);
    if (!p || size == 0 || size % GRAN) return INVALID_VALUE;
    if (align < GRAN) align = GRAN;
    if (align & (align - 1)) return INVALID_VALUE;
    size_t mapped = 0;
    void *m = map_aligned(size, align, PROT_NONE, &mapped);
    struct range *r = m ? malloc(sizeof *r) : NULL;
    if (!r) {
        if (m) munmap(m, mapped);
        return OUT_OF_MEMORY;
    }
    r->base = (CUdeviceptr)(uintptr_t)m;
    r->size = size;
    r->dev = standin_current_device();
    pthread_mutex_lock(&mu);
    r->next = ranges;
    ranges = r;
    pthread_mutex_unlock(&mu);
    *p = r->base;
    return SUCCESS;
}
EXPORT CUresult cuMemAddressFree(CUdeviceptr p, size_t size) {
    count(C_cuMemAddressFree);
    if (!p || size % GRAN) return INVALID_VALUE;
    pthread_mutex_lock(&mu);
    for (struct range **rr = &ranges; *rr; rr = &(*rr)->next) {
        if ((*rr)->base == p) {
            struct range *r = *rr;
            *rr = r->next;
            free(r);
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    munmap((void *)(uintptr_t)p, size);
    return SUCCESS;
}
EXPORT CUresult cuMemCreate(unsigned long long *handle, size_t size, const void *prop,
                            unsigned long long flags) {
    (void)prop;
    (void)flags;
    count(C_cuMemCreate);
    if (!handle || size == 0 || size % GRAN) return INVALID_VALUE;
    int dev = standin_current_device();
    pthread_mutex_lock(&mu);
    int ok = charge(dev, size);
    pthread_mutex_unlock(&mu);
    if (!ok) return OUT_OF_MEMORY;
    struct phys *ph = malloc(sizeof *ph);
    if (!ph) {
        pthread_mutex_lock(&mu);
        used[dev] -= size;
        pthread_mutex_unlock(&mu);
        return OUT_OF_MEMORY;
    }
    ph->magic = PHYS_MAGIC;
    ph->size = size;
    ph->dev = dev;
    *handle = (unsigned long long)(uintptr_t)ph;
    return SUCCESS;
}
EXPORT CUresult cuMemRelease(unsigned long long handle) {
    count(C_cuMemRelease);
    struct phys *ph = (struct phys *)(uintptr_t)handle;
    if (!ph || ph->magic != PHYS_MAGIC) return INVALID_HANDLE;
    pthread_mutex_lock(&mu);
    used[ph->dev] -= ph->size;
    pthread_mutex_unlock(&mu);
    ph->magic = 0;
    free(ph);
    return SUCCESS;
}
EXPORT CUresult cuMemMap(CUdeviceptr p, size_t size, size_t offset, unsigned long long handle,
                         unsigned long long flags) {
    (void)flags;
    count(C_cuMemMap);
    struct phys *ph = (struct phys *)(uintptr_t)handle;
    if (!ph || ph->magic != PHYS_MAGIC) return INVALID_HANDLE;
    if (offset != 0 || size != ph->size || p % GRAN) return INVALID_VALUE;
    return mprotect((void *)(uintptr_t)p, size, PROT_READ | PROT_WRITE) == 0 ? SUCCESS : INVALID_VALUE;
}
EXPORT CUresult cuMemUnmap(CUdeviceptr p, size_t size) {
    count(C_cuMemUnmap);
    if (p % GRAN || size % GRAN) return INVALID_VALUE;
    madvise((void *)(uintptr_t)p, size, MADV_DONTNEED);
    return mprotect((void *)(uintptr_t)p, size, PROT_NONE) == 0 ? SUCCESS : INVALID_VALUE;
}
EXPORT CUresult cuMemSetAccess(CUdeviceptr p, size_t size, const void *desc, size_t n) {
    (void)p;
    (void)size;
    count(C_cuMemSetAccess);
    return desc && n > 0 ? SUCCESS : INVALID_VALUE;
}

/* ---- pointers ---- */
EXPORT int standin_lookup(unsigned long long ptr, int *dev, unsigned long long *base, size_t *size) {
    int found = 0;
    pthread_mutex_lock(&mu);
    for (size_t b = 0; b < BUCKETS && !found; b++) {
        for (struct alloc *a = table[b]; a; a = a->next) {
            if (ptr >= a->ptr && ptr < a->ptr + a->size) {
                if (dev) *dev = a->dev;
                if (base) *base = a->ptr;
                if (size) *size = a->size;
                found = 1;
                break;
            }
        }
    }
    for (struct range *r = ranges; r && !found; r = r->next) {
        if (ptr >= r->base && ptr < r->base + r->size) {
            if (dev) *dev = r->dev;
            if (base) *base = r->base;
            if (size) *size = r->size;
            found = 1;
        }
    }
    pthread_mutex_unlock(&mu);
    return found;
}
EXPORT CUresult cuPointerGetAttribute(void *data, int attr, CUdeviceptr ptr) {
    count(C_cuPointerGetAttribute);
    if (!data) return INVALID_VALUE;
    int dev = 0;
    unsigned long long base = 0;
    size_t size = 0;
    if (!standin_lookup(ptr, &dev, &base, &size)) return INVALID_VALUE;
    switch (attr) {
    case 1: *(CUcontext *)data = (CUcontext)(uintptr_t)(dev + 1); return SUCCESS; /* context */
    case 2: *(unsigned *)data = 2; return SUCCESS;                             /* memory type: device */
    case 3: *(CUdeviceptr *)data = ptr; return SUCCESS;                        /* device pointer */
    case 9: *(int *)data = dev; return SUCCESS;                                /* device ordinal */
    case 11: *(CUdeviceptr *)data = base; return SUCCESS;                      /* range start */
    case 12: *(size_t *)data = size; return SUCCESS;                           /* range size */
    default: return NOT_SUPPORTED;
    }
}
EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr ptr) {
    unsigned long long b = 0;
    size_t s = 0;
    if (!standin_lookup(ptr, NULL, &b, &s)) return NOT_FOUND;
    if (base) *base = b;
    if (size) *size = s;
    return SUCCESS;
}

/* ---- events and streams ---- */
struct event { unsigned magic; unsigned flags; int recorded; };
#define EVENT_MAGIC 0xE7E7E7E7u
EXPORT CUresult cuEventCreate(CUevent *e, unsigned flags) {
    count(C_cuEventCreate);
    if (!e) return INVALID_VALUE;
    struct event *ev = calloc(1, sizeof *ev);
    if (!ev) return OUT_OF_MEMORY;
    ev->magic = EVENT_MAGIC;
    ev->flags = flags;
    *e = ev;
    return SUCCESS;
}
static int valid_event(CUevent e) { return e && ((struct event *)e)->magic == EVENT_MAGIC; }
EXPORT CUresult cuEventRecord(CUevent e, CUstream s) {
    (void)s;
    count(C_cuEventRecord);
    if (!valid_event(e)) return INVALID_HANDLE;
    ((struct event *)e)->recorded = 1;
    return SUCCESS;
}
EXPORT CUresult cuEventQuery(CUevent e) {
    count(C_cuEventQuery);
    return valid_event(e) ? SUCCESS : INVALID_HANDLE;
}
EXPORT CUresult cuEventSynchronize(CUevent e) {
    count(C_cuEventSynchronize);
    return valid_event(e) ? SUCCESS : INVALID_HANDLE;
}
EXPORT CUresult cuEventDestroy_v2(CUevent e) {
    count(C_cuEventDestroy);
    if (!valid_event(e)) return INVALID_HANDLE;
    ((struct event *)e)->magic = 0;
    free(e);
    return SUCCESS;
}
EXPORT CUresult cuEventDestroy(CUevent e) { return cuEventDestroy_v2(e); }
EXPORT CUresult cuStreamCreate(CUstream *s, unsigned flags) {
    (void)flags;
    count(C_cuStreamCreate);
    if (!s) return INVALID_VALUE;
    *s = malloc(16);
    return *s ? SUCCESS : OUT_OF_MEMORY;
}
EXPORT CUresult cuStreamDestroy_v2(CUstream s) {
    count(C_cuStreamDestroy);
    free(s);
    return SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(CUstream s) {
    (void)s;
    count(C_cuStreamSynchronize);
    return SUCCESS;
}
/* Never capturing: status 0 is CU_STREAM_CAPTURE_STATUS_NONE. */
EXPORT CUresult cuStreamIsCapturing(CUstream s, int *status) {
    (void)s;
    count(C_cuStreamIsCapturing);
    if (!status) return INVALID_VALUE;
    *status = 0;
    return SUCCESS;
}
/* No compute: a kernel launch is refused, never run; so is every other entry point in
 * REFUSED below (copies, memsets, stream memory operations, sharing handles, multicast,
 * green contexts). */
static CUresult refused(void) { return NOT_SUPPORTED; }
EXPORT CUresult cuLaunchKernel(void) { return refused(); }

/* ---- errors ---- */
static const char *err_name(CUresult r) {
    switch (r) {
    case SUCCESS: return "CUDA_SUCCESS";
    case INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case NOT_READY: return "CUDA_ERROR_NOT_READY";
    case NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    default: return NULL;
    }
}
EXPORT CUresult cuGetErrorName(CUresult r, const char **s) {
    count(C_cuGetErrorName);
    if (!s) return INVALID_VALUE;
    *s = err_name(r);
    return *s ? SUCCESS : INVALID_VALUE;
}
EXPORT CUresult cuGetErrorString(CUresult r, const char **s) {
    count(C_cuGetErrorString);
    if (!s) return INVALID_VALUE;
    *s = r == NOT_SUPPORTED ? "operation not supported by the cudalloc stand-in CUDA (no compute)" : err_name(r);
    return *s ? SUCCESS : INVALID_VALUE;
}

/* ---- cuGetProcAddress: how cudart (11.3+) and PyTorch find driver entry points ---- */
struct sym { const char *name; void *fn; };
static const struct sym SYMS[] = {
    {"cuInit", (void *)cuInit},
    {"cuDriverGetVersion", (void *)cuDriverGetVersion},
    {"cuDeviceGetCount", (void *)cuDeviceGetCount},
    {"cuDeviceGet", (void *)cuDeviceGet},
    {"cuDeviceGetName", (void *)cuDeviceGetName},
    {"cuDeviceTotalMem", (void *)cuDeviceTotalMem_v2},
    {"cuDeviceGetUuid", (void *)cuDeviceGetUuid_v2},
    {"cuDeviceGetAttribute", (void *)cuDeviceGetAttribute},
    {"cuDevicePrimaryCtxRetain", (void *)cuDevicePrimaryCtxRetain},
    {"cuDevicePrimaryCtxRelease", (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuDevicePrimaryCtxGetState", (void *)cuDevicePrimaryCtxGetState},
    {"cuDevicePrimaryCtxSetFlags", (void *)cuDevicePrimaryCtxSetFlags_v2},
    {"cuCtxSetCurrent", (void *)cuCtxSetCurrent},
    {"cuCtxGetCurrent", (void *)cuCtxGetCurrent},
    {"cuCtxSynchronize", (void *)cuCtxSynchronize},
    {"cuCtxPushCurrent", (void *)cuCtxPushCurrent_v2},
    {"cuCtxPopCurrent", (void *)cuCtxPopCurrent_v2},
    {"cuCtxGetDevice", (void *)cuCtxGetDevice},
    {"cuMemAlloc", (void *)cuMemAlloc_v2},
    {"cuMemFree", (void *)cuMemFree_v2},
    {"cuMemGetInfo", (void *)cuMemGetInfo_v2},
    {"cuMemAllocAsync", (void *)cuMemAllocAsync},
    {"cuMemFreeAsync", (void *)cuMemFreeAsync},
    {"cuMemGetAddressRange", (void *)cuMemGetAddressRange_v2},
    {"cuPointerGetAttribute", (void *)cuPointerGetAttribute},
    {"cuEventCreate", (void *)cuEventCreate},
    {"cuEventRecord", (void *)cuEventRecord},
    {"cuEventQuery", (void *)cuEventQuery},
    {"cuEventSynchronize", (void *)cuEventSynchronize},
    {"cuEventDestroy", (void *)cuEventDestroy_v2},
    {"cuGetErrorName", (void *)cuGetErrorName},
    {"cuGetErrorString", (void *)cuGetErrorString},
    {"cuStreamCreate", (void *)cuStreamCreate},
    {"cuStreamDestroy", (void *)cuStreamDestroy_v2},
    {"cuStreamSynchronize", (void *)cuStreamSynchronize},
    {"cuStreamIsCapturing", (void *)cuStreamIsCapturing},
    {"cuLaunchKernel", (void *)cuLaunchKernel},
    {"cuMemGetAllocationGranularity", (void *)cuMemGetAllocationGranularity},
    {"cuMemAddressReserve", (void *)cuMemAddressReserve},
    {"cuMemAddressFree", (void *)cuMemAddressFree},
    {"cuMemCreate", (void *)cuMemCreate},
    {"cuMemRelease", (void *)cuMemRelease},
    {"cuMemMap", (void *)cuMemMap},
    {"cuMemUnmap", (void *)cuMemUnmap},
    {"cuMemSetAccess", (void *)cuMemSetAccess},
};
/* Found, so that a client that resolves them all at start works; refused when called. */
static const char *const REFUSED[] = {
    "cuMemcpy", "cuMemcpyAsync", "cuMemcpyHtoD", "cuMemcpyDtoH", "cuMemsetD8", "cuMemsetD32",
    "cuMemsetD32Async", "cuStreamWriteValue32", "cuMemExportToShareableHandle",
    "cuMemImportFromShareableHandle", "cuMemRetainAllocationHandle",
    "cuMemGetAllocationPropertiesFromHandle", "cuMulticastCreate", "cuMulticastAddDevice",
    "cuMulticastBindMem", "cuMulticastUnbind", "cuGreenCtxCreate", "cuGreenCtxDestroy",
    "cuGreenCtxStreamCreate", "cuCtxFromGreenCtx", "cuDeviceGetDevResource",
    "cuDevResourceGenerateDesc", "cuDevSmResourceSplitByCount", "cuLogsRegisterCallback",
    "cuLogsUnregisterCallback",
};
EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                    unsigned long long flags, int *status);
EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version,
                                 unsigned long long flags) {
    (void)version;
    count(C_cuGetProcAddress);
    if (!symbol || !pfn) return INVALID_VALUE;
    if (strcmp(symbol, "cuGetProcAddress") == 0) {
        *pfn = (void *)cuGetProcAddress_v2;
        return SUCCESS;
    }
    /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: the _ptsz variants, as the driver does. */
    if (flags & 2) {
        if (strcmp(symbol, "cuMemAllocAsync") == 0) {
            *pfn = (void *)cuMemAllocAsync_ptsz;
            return SUCCESS;
        }
        if (strcmp(symbol, "cuMemFreeAsync") == 0) {
            *pfn = (void *)cuMemFreeAsync_ptsz;
            return SUCCESS;
        }
    }
    for (size_t i = 0; i < sizeof SYMS / sizeof SYMS[0]; i++) {
        if (strcmp(SYMS[i].name, symbol) == 0) {
            *pfn = SYMS[i].fn;
            return SUCCESS;
        }
    }
    for (size_t i = 0; i < sizeof REFUSED / sizeof REFUSED[0]; i++) {
        if (strcmp(REFUSED[i], symbol) == 0) {
            *pfn = (void *)refused;
            return SUCCESS;
        }
    }
    if (logging()) fprintf(stderr, "cudalloc stand-in: no driver entry point %s\n", symbol);
    *pfn = NULL;
    return NOT_FOUND;
}
EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                    unsigned long long flags, int *status) {
    CUresult r = cuGetProcAddress(symbol, pfn, version, flags);
    if (status) *status = r == SUCCESS ? 0 : 1; /* CU_GET_PROC_ADDRESS_SUCCESS / SYMBOL_NOT_FOUND */
    return r;
}

/* ---- the report at exit ---- */
__attribute__((destructor)) static void report(void) {
    const char *path = getenv("CUDALLOC_STANDIN_REPORT");
    if (!path || !*path) return;
    /* A process that never used the device (a helper that the program ran and that inherited
     * LD_PRELOAD) leaves the report of the one that did alone. */
    unsigned long long calls = 0;
    for (int i = 0; i < C_COUNT; i++) calls += counts[i];
    if (calls == 0) return;
    int ndev = standin_device_count();
    if (strcmp(path, "stderr") == 0) {
        fprintf(stderr, "cudalloc stand-in: cuMemAlloc %llu, cuMemFree %llu, cuMemCreate %llu, "
                        "cudaMalloc %llu, cudaFree %llu; peak in use %zu bytes of %zu\n",
                counts[C_cuMemAlloc], counts[C_cuMemFree], counts[C_cuMemCreate], counts[C_cudaMalloc],
                counts[C_cudaFree], peak[0], standin_capacity());
        return;
    }
    FILE *f = fopen(path, "w");
    if (!f) return;
    for (int i = 0; i < C_COUNT; i++) fprintf(f, "%s=%llu\n", NAMES[i], counts[i]);
    for (int d = 0; d < ndev; d++) fprintf(f, "peak_used.%d=%zu\nused.%d=%zu\n", d, peak[d], d, used[d]);
    fprintf(f, "live_allocations=%zu\ncapacity=%zu\n", live_allocs, standin_capacity());
    fclose(f);
}
