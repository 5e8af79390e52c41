/* The stand-in CUDA runtime, libcudart.so.13: the runtime entry points the PyTorch CUDA
 * wheel imports (all 113 of torch 2.15's, under the version node libcudart.so.13), over the
 * stand-in driver (cuda.c), which holds the device model.
 *
 * Memory, streams, events, device queries and driver entry points work; kernel launches,
 * copies, memsets, graphs, IPC and memory pools return cudaErrorNotSupported (with the
 * message "operation not supported by the cudalloc stand-in CUDA (no compute)"), never
 * crash. Fat binaries register as no-ops. Host allocations (pinned memory) are plain host
 * memory. This file must keep no device state of its own: it asks the driver. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "standin.h"

typedef int cudaError_t;
typedef void *cudaStream_t;
typedef void *cudaEvent_t;
typedef unsigned long long CUdeviceptr;
#define EXPORT STANDIN_EXPORT

enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorSymbolNotFound = 500,
    cudaErrorNotReady = 600,
    cudaErrorNotSupported = 801,
    cudaErrorUnknown = 999,
};

/* The driver's entry points this runtime calls (cuda.c; linked, as the real runtime is to
 * the real driver). */
int cuInit(unsigned);
int cuDriverGetVersion(int *);
int cuDeviceGetCount(int *);
int cuDeviceGetAttribute(int *, int, int);
int cuDeviceGetName(char *, int, int);
int cuDevicePrimaryCtxRetain(void **, int);
int cuCtxSetCurrent(void *);
int cuMemAlloc_v2(CUdeviceptr *, size_t);
int cuMemFree_v2(CUdeviceptr);
int cuMemAllocAsync(CUdeviceptr *, size_t, void *);
int cuMemFreeAsync(CUdeviceptr, void *);
int cuMemGetInfo_v2(size_t *, size_t *);
int cuEventCreate(void **, unsigned);
int cuEventRecord(void *, void *);
int cuEventQuery(void *);
int cuEventSynchronize(void *);
int cuEventDestroy_v2(void *);
int cuStreamCreate(void **, unsigned);
int cuStreamDestroy_v2(void *);
int cuGetProcAddress_v2(const char *, void **, int, unsigned long long, int *);

/* ---- errors: the last one per thread ---- */
static __thread cudaError_t last_error;
static cudaError_t ret(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}
EXPORT cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
EXPORT cudaError_t cudaPeekAtLastError(void) { return last_error; }
EXPORT const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorSymbolNotFound: return "cudaErrorSymbolNotFound";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
    }
}
EXPORT const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorSymbolNotFound: return "named symbol not found";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorNotSupported: return "operation not supported by the cudalloc stand-in CUDA (no compute)";
    default: return "unknown error";
    }
}
/* Driver statuses and runtime errors share their numbers for everything the driver returns. */
static cudaError_t from_driver(int r) { return ret(r == 201 ? cudaErrorInvalidDevice : r); }

/* ---- devices: the current device per thread, its primary context made current lazily ---- */
static __thread int current_device = -1;
static int device_count(void) {
    static int n = -1;
    if (n < 0) {
        int c = 0;
        cuInit(0);
        n = cuDeviceGetCount(&c) == 0 ? c : 0;
    }
    return n;
}
/* Make this thread's current device's primary context current in the driver. */
static __thread int context_set_for = -1;
static cudaError_t ensure_context(void) {
    if (current_device >= 0 && context_set_for == current_device) return cudaSuccess;
    if (device_count() == 0) return ret(cudaErrorNoDevice);
    if (current_device < 0) current_device = 0;
    void *ctx = NULL;
    int r = cuDevicePrimaryCtxRetain(&ctx, current_device);
    if (r == 0) r = cuCtxSetCurrent(ctx);
    if (r) return from_driver(r);
    context_set_for = current_device;
    return cudaSuccess;
}
EXPORT cudaError_t cudaGetDeviceCount(int *n) {
    if (!n) return ret(cudaErrorInvalidValue);
    *n = device_count();
    return *n ? cudaSuccess : ret(cudaErrorNoDevice);
}
EXPORT cudaError_t cudaGetDevice(int *d) {
    if (!d) return ret(cudaErrorInvalidValue);
    *d = current_device < 0 ? 0 : current_device;
    return cudaSuccess;
}
EXPORT cudaError_t cudaSetDevice(int d) {
    if (d < 0 || d >= device_count()) return ret(cudaErrorInvalidDevice);
    current_device = d;
    return ensure_context();
}
EXPORT cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
EXPORT cudaError_t cudaDriverGetVersion(int *v) {
    if (!v) return ret(cudaErrorInvalidValue);
    return from_driver(cuDriverGetVersion(v));
}
EXPORT cudaError_t cudaRuntimeGetVersion(int *v) {
    if (!v) return ret(cudaErrorInvalidValue);
    *v = 13000;
    return cudaSuccess;
}
EXPORT cudaError_t cudaDeviceGetAttribute(int *v, int attr, int d) {
    if (!v) return ret(cudaErrorInvalidValue);
    /* The runtime's cudaDeviceAttr numbers are the driver's. */
    return from_driver(cuDeviceGetAttribute(v, attr, d));
}
EXPORT cudaError_t cudaDeviceGetPCIBusId(char *id, int len, int d) {
    if (!id || len <= 0) return ret(cudaErrorInvalidValue);
    if (d < 0 || d >= device_count()) return ret(cudaErrorInvalidDevice);
    snprintf(id, (size_t)len, "00000000:%02X:00.0", d + 1);
    return cudaSuccess;
}
EXPORT cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return cudaSuccess;
}
EXPORT cudaError_t cudaDeviceCanAccessPeer(int *can, int d, int peer) {
    (void)d;
    (void)peer;
    if (!can) return ret(cudaErrorInvalidValue);
    *can = 0;
    return cudaSuccess;
}

/* CUDA 13's struct cudaDeviceProp, field for field: the layout is the ABI (the real-PyTorch
 * tests read fields from both ends of it through torch, which was compiled against the real
 * header). */
struct standin_device_prop {
    char name[256];
    unsigned char uuid[16];
    char luid[8];
    unsigned luidDeviceNodeMask;
    size_t totalGlobalMem, sharedMemPerBlock;
    int regsPerBlock, warpSize;
    size_t memPitch;
    int maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
    size_t totalConstMem;
    int major, minor;
    size_t textureAlignment, texturePitchAlignment;
    int multiProcessorCount, integrated, canMapHostMemory, maxTexture1D, maxTexture1DMipmap;
    int maxTexture2D[2], maxTexture2DMipmap[2], maxTexture2DLinear[3], maxTexture2DGather[2];
    int maxTexture3D[3], maxTexture3DAlt[3], maxTextureCubemap, maxTexture1DLayered[2];
    int maxTexture2DLayered[3], maxTextureCubemapLayered[2], maxSurface1D, maxSurface2D[2];
    int maxSurface3D[3], maxSurface1DLayered[2], maxSurface2DLayered[3], maxSurfaceCubemap;
    int maxSurfaceCubemapLayered[2];
    size_t surfaceAlignment;
    int concurrentKernels, ECCEnabled, pciBusID, pciDeviceID, pciDomainID, tccDriver;
    int asyncEngineCount, unifiedAddressing, memoryBusWidth, l2CacheSize;
    int persistingL2CacheMaxSize, maxThreadsPerMultiProcessor, streamPrioritiesSupported;
    int globalL1CacheSupported, localL1CacheSupported;
    size_t sharedMemPerMultiprocessor;
    int regsPerMultiprocessor, managedMemory, isMultiGpuBoard, multiGpuBoardGroupID;
    int hostNativeAtomicSupported, pageableMemoryAccess, concurrentManagedAccess;
    int computePreemptionSupported, canUseHostPointerForRegisteredMem, cooperativeLaunch;
    size_t sharedMemPerBlockOptin;
    int pageableMemoryAccessUsesHostPageTables, directManagedMemAccessFromHost;
    int maxBlocksPerMultiProcessor, accessPolicyMaxWindowSize;
    size_t reservedSharedMemPerBlock;
    int hostRegisterSupported, sparseCudaArraySupported, hostRegisterReadOnlySupported;
    int timelineSemaphoreInteropSupported, memoryPoolsSupported, gpuDirectRDMASupported;
    unsigned gpuDirectRDMAFlushWritesOptions;
    int gpuDirectRDMAWritesOrdering;
    unsigned memoryPoolSupportedHandleTypes;
    int deferredMappingCudaArraySupported, ipcEventSupported, clusterLaunch;
    int unifiedFunctionPointers, deviceNumaConfig, deviceNumaId, mpsEnabled, hostNumaId;
    unsigned gpuPciDeviceID, gpuPciSubsystemID;
    int hostNumaMultinodeIpcSupported, reserved[56];
};
EXPORT cudaError_t cudaGetDeviceProperties(struct standin_device_prop *p, int d);
EXPORT cudaError_t cudaGetDeviceProperties_v2(struct standin_device_prop *p, int d) {
    return cudaGetDeviceProperties(p, d);
}
EXPORT cudaError_t cudaGetDeviceProperties(struct standin_device_prop *p, int d) {
    if (!p) return ret(cudaErrorInvalidValue);
    if (d < 0 || d >= device_count()) return ret(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    cuDeviceGetName(p->name, sizeof p->name, d);
    p->uuid[15] = (unsigned char)d;
    p->totalGlobalMem = standin_capacity();
#define ATTR(field, n) cuDeviceGetAttribute(&p->field, n, d)
    ATTR(maxThreadsPerBlock, 1);
    ATTR(maxThreadsDim[0], 2);
    ATTR(maxThreadsDim[1], 3);
    ATTR(maxThreadsDim[2], 4);
    ATTR(maxGridSize[0], 5);
    ATTR(maxGridSize[1], 6);
    ATTR(maxGridSize[2], 7);
    ATTR(regsPerBlock, 12);
    ATTR(warpSize, 10);
    ATTR(multiProcessorCount, 16);
    ATTR(canMapHostMemory, 19);
    ATTR(concurrentKernels, 31);
    ATTR(pciBusID, 33);
    ATTR(asyncEngineCount, 40);
    ATTR(unifiedAddressing, 41);
    ATTR(memoryBusWidth, 37);
    ATTR(l2CacheSize, 38);
    ATTR(maxThreadsPerMultiProcessor, 39);
    ATTR(major, 75);
    ATTR(minor, 76);
    ATTR(regsPerMultiprocessor, 82);
    ATTR(managedMemory, 83);
    ATTR(maxBlocksPerMultiProcessor, 106);
#undef ATTR
    int v = 0;
    cuDeviceGetAttribute(&v, 8, d);
    p->sharedMemPerBlock = (size_t)v;
    cuDeviceGetAttribute(&v, 9, d);
    p->totalConstMem = (size_t)v;
    cuDeviceGetAttribute(&v, 81, d);
    p->sharedMemPerMultiprocessor = (size_t)v;
    cuDeviceGetAttribute(&v, 97, d);
    p->sharedMemPerBlockOptin = (size_t)v;
    p->streamPrioritiesSupported = 1;
    p->memPitch = (size_t)1 << 31;
    p->textureAlignment = 512;
    p->texturePitchAlignment = 32;
    return cudaSuccess;
}

/* ---- device memory ---- */
EXPORT cudaError_t cudaMalloc(void **p, size_t n) {
    standin_count_add(C_cudaMalloc);
    if (!p) return ret(cudaErrorInvalidValue);
    *p = NULL;
    if (n == 0) return cudaSuccess;
    cudaError_t e = ensure_context();
    if (e) return e;
    CUdeviceptr d = 0;
    int r = cuMemAlloc_v2(&d, n);
    if (r) return from_driver(r);
    *p = (void *)(uintptr_t)d;
    return cudaSuccess;
}
EXPORT cudaError_t cudaFree(void *p) {
    standin_count_add(C_cudaFree);
    if (!p) return cudaSuccess;
    return from_driver(cuMemFree_v2((CUdeviceptr)(uintptr_t)p));
}
EXPORT cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t s) {
    standin_count_add(C_cudaMallocAsync);
    if (!p) return ret(cudaErrorInvalidValue);
    cudaError_t e = ensure_context();
    if (e) return e;
    CUdeviceptr d = 0;
    int r = cuMemAllocAsync(&d, n, s);
    if (r) return from_driver(r);
    *p = (void *)(uintptr_t)d;
    return cudaSuccess;
}
EXPORT cudaError_t cudaFreeAsync(void *p, cudaStream_t s) {
    standin_count_add(C_cudaFreeAsync);
    if (!p) return cudaSuccess;
    return from_driver(cuMemFreeAsync((CUdeviceptr)(uintptr_t)p, s));
}
EXPORT cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
    standin_count_add(C_cudaMemGetInfo);
    cudaError_t e = ensure_context();
    if (e) return e;
    return from_driver(cuMemGetInfo_v2(free_b, total));
}
/* Pinned host memory is ordinary host memory here. */
EXPORT cudaError_t cudaMallocHost(void **p, size_t n) {
    standin_count_add(C_cudaMallocHost);
    if (!p) return ret(cudaErrorInvalidValue);
    *p = NULL;
    if (n == 0) return cudaSuccess;
    if (posix_memalign(p, 4096, n) != 0) {
        *p = NULL;
        return ret(cudaErrorMemoryAllocation);
    }
    return cudaSuccess;
}
EXPORT cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags) {
    (void)flags;
    return cudaMallocHost(p, n);
}
EXPORT cudaError_t cudaFreeHost(void *p) {
    standin_count_add(C_cudaFreeHost);
    free(p);
    return cudaSuccess;
}
EXPORT cudaError_t cudaHostRegister(void *p, size_t n, unsigned flags) {
    (void)flags;
    return p && n ? cudaSuccess : ret(cudaErrorInvalidValue);
}
EXPORT cudaError_t cudaHostUnregister(void *p) { return p ? cudaSuccess : ret(cudaErrorInvalidValue); }
struct standin_pointer_attributes { int type, device; void *devicePointer, *hostPointer; long reserved[8]; };
EXPORT cudaError_t cudaPointerGetAttributes(struct standin_pointer_attributes *a, const void *p) {
    if (!a) return ret(cudaErrorInvalidValue);
    memset(a, 0, sizeof *a);
    int dev = 0;
    if (p && standin_lookup((unsigned long long)(uintptr_t)p, &dev, NULL, NULL)) {
        a->type = 2; /* cudaMemoryTypeDevice */
        a->device = dev;
        a->devicePointer = (void *)p;
    } else {
        a->type = 0; /* cudaMemoryTypeUnregistered */
        a->device = -2;
    }
    return cudaSuccess;
}
EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned version,
                                                    unsigned long long flags, int *status) {
    standin_count_add(C_cudaGetDriverEntryPointByVersion);
    if (!symbol || !fn) return ret(cudaErrorInvalidValue);
    int st = 0;
    int r = cuGetProcAddress_v2(symbol, fn, (int)version, flags, &st);
    if (status) *status = st;
    /* A symbol the driver lacks is reported through the status, not as an error. */
    return r == 0 || r == 500 ? cudaSuccess : from_driver(r);
}

/* ---- streams and events: everything completes at once ---- */
EXPORT cudaError_t cudaStreamCreate(cudaStream_t *s) {
    standin_count_add(C_cudaStreamCreate);
    if (!s) return ret(cudaErrorInvalidValue);
    cudaError_t e = ensure_context();
    if (e) return e;
    return from_driver(cuStreamCreate(s, 0));
}
EXPORT cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    return cudaStreamCreate(s);
}
EXPORT cudaError_t cudaStreamCreateWithPriority(cudaStream_t *s, unsigned flags, int priority) {
    (void)flags;
    (void)priority;
    return cudaStreamCreate(s);
}
/* The legacy and per-thread default streams are the handles 0, 1 and 2. */
static int is_default_stream(cudaStream_t s) { return (uintptr_t)s <= 2; }
EXPORT cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (is_default_stream(s)) return ret(cudaErrorInvalidResourceHandle);
    return from_driver(cuStreamDestroy_v2(s));
}
EXPORT cudaError_t cudaStreamQuery(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
EXPORT cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags) {
    (void)s;
    (void)flags;
    return e ? cudaSuccess : ret(cudaErrorInvalidResourceHandle);
}
EXPORT cudaError_t cudaStreamGetPriority(cudaStream_t s, int *priority) {
    (void)s;
    if (!priority) return ret(cudaErrorInvalidValue);
    *priority = 0;
    return cudaSuccess;
}
EXPORT cudaError_t cudaStreamIsCapturing(cudaStream_t s, int *status) {
    (void)s;
    if (!status) return ret(cudaErrorInvalidValue);
    *status = 0; /* cudaStreamCaptureStatusNone */
    return cudaSuccess;
}
EXPORT cudaError_t cudaStreamGetCaptureInfo(cudaStream_t s, int *status, unsigned long long *id,
                                            void **graph, const void **deps, const void **edges,
                                            size_t *ndeps) {
    (void)s;
    if (!status) return ret(cudaErrorInvalidValue);
    *status = 0;
    if (id) *id = 0;
    if (graph) *graph = NULL;
    if (deps) *deps = NULL;
    if (edges) *edges = NULL;
    if (ndeps) *ndeps = 0;
    return cudaSuccess;
}
EXPORT cudaError_t cudaThreadExchangeStreamCaptureMode(int *mode) {
    return mode ? cudaSuccess : ret(cudaErrorInvalidValue);
}
typedef void (*host_fn)(void *);
EXPORT cudaError_t cudaLaunchHostFunc(cudaStream_t s, host_fn fn, void *data) {
    (void)s;
    if (!fn) return ret(cudaErrorInvalidValue);
    fn(data);
    return cudaSuccess;
}
typedef void (*stream_callback)(cudaStream_t, cudaError_t, void *);
EXPORT cudaError_t cudaStreamAddCallback(cudaStream_t s, stream_callback cb, void *data, unsigned flags) {
    (void)flags;
    if (!cb) return ret(cudaErrorInvalidValue);
    cb(s, cudaSuccess, data);
    return cudaSuccess;
}
EXPORT cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    if (!e) return ret(cudaErrorInvalidValue);
    return from_driver(cuEventCreate(e, flags));
}
EXPORT cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
EXPORT cudaError_t cudaEventDestroy(cudaEvent_t e) { return from_driver(cuEventDestroy_v2(e)); }
EXPORT cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    standin_count_add(C_cudaEventRecord);
    return from_driver(cuEventRecord(e, s));
}
EXPORT cudaError_t cudaEventRecordWithFlags(cudaEvent_t e, cudaStream_t s, unsigned flags) {
    (void)flags;
    return cudaEventRecord(e, s);
}
EXPORT cudaError_t cudaEventQuery(cudaEvent_t e) { return from_driver(cuEventQuery(e)); }
EXPORT cudaError_t cudaEventSynchronize(cudaEvent_t e) { return from_driver(cuEventSynchronize(e)); }
EXPORT cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!ms || !a || !b) return ret(cudaErrorInvalidValue);
    *ms = 0.0f;
    return cudaSuccess;
}
EXPORT cudaError_t cudaProfilerStart(void) { return cudaSuccess; }
EXPORT cudaError_t cudaProfilerStop(void) { return cudaSuccess; }

/* ---- fat binaries: registered as no-ops (there is nothing to run them on) ---- */
static void *fatbin_handle_slot;
EXPORT void **__cudaRegisterFatBinary(void *fatbin) {
    (void)fatbin;
    return &fatbin_handle_slot;
}
EXPORT void __cudaRegisterFatBinaryEnd(void **h) { (void)h; }
EXPORT void __cudaUnregisterFatBinary(void **h) { (void)h; }
EXPORT void __cudaRegisterFunction(void) {}
EXPORT void __cudaRegisterVar(void) {}
/* The <<<...>>> launch sequence: the configuration is accepted, the launch refused. */
EXPORT unsigned __cudaPushCallConfiguration(void) { return 0; }
EXPORT cudaError_t __cudaPopCallConfiguration(void) { return cudaSuccess; }

/* ---- no compute: each of these is refused with cudaErrorNotSupported ---- */
static cudaError_t refused(int counter) {
    if (counter >= 0) standin_count_add(counter);
    return ret(cudaErrorNotSupported);
}
#define REFUSED(name, counter) \
    EXPORT cudaError_t name(void) { return refused(counter); }
REFUSED(cudaLaunchKernel, C_cudaLaunchKernel)
REFUSED(cudaLaunchKernelExC, C_cudaLaunchKernel)
REFUSED(cudaLaunchCooperativeKernel, C_cudaLaunchKernel)
REFUSED(__cudaLaunchKernel, C_cudaLaunchKernel)
REFUSED(__cudaGetKernel, -1)
REFUSED(cudaMemcpy, C_cudaMemcpy)
REFUSED(cudaMemcpyAsync, C_cudaMemcpy)
REFUSED(cudaMemcpy2DAsync, C_cudaMemcpy)
REFUSED(cudaMemcpyPeerAsync, C_cudaMemcpy)
REFUSED(cudaMemcpyToSymbol, C_cudaMemcpy)
REFUSED(cudaMemset, C_cudaMemset)
REFUSED(cudaMemsetAsync, C_cudaMemset)
REFUSED(cudaMallocManaged, -1)
REFUSED(cudaDeviceEnablePeerAccess, -1)
REFUSED(cudaFuncGetAttributes, -1)
REFUSED(cudaFuncSetAttribute, -1)
REFUSED(cudaKernelSetAttributeForDevice, -1)
REFUSED(cudaGetSymbolAddress, -1)
REFUSED(cudaOccupancyMaxActiveBlocksPerMultiprocessor, -1)
REFUSED(cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, -1)
REFUSED(cudaIpcGetMemHandle, -1)
REFUSED(cudaIpcOpenMemHandle, -1)
REFUSED(cudaIpcCloseMemHandle, -1)
REFUSED(cudaIpcGetEventHandle, -1)
REFUSED(cudaIpcOpenEventHandle, -1)
REFUSED(cudaDeviceGetDefaultMemPool, -1)
REFUSED(cudaMemPoolGetAttribute, -1)
REFUSED(cudaMemPoolSetAttribute, -1)
REFUSED(cudaMemPoolSetAccess, -1)
REFUSED(cudaMemPoolTrimTo, -1)
REFUSED(cudaDeviceGetGraphMemAttribute, -1)
REFUSED(cudaDeviceSetGraphMemAttribute, -1)
REFUSED(cudaStreamBeginCapture, -1)
REFUSED(cudaStreamBeginCaptureToGraph, -1)
REFUSED(cudaStreamEndCapture, -1)
REFUSED(cudaStreamUpdateCaptureDependencies, -1)
REFUSED(cudaGraphAddNode, -1)
REFUSED(cudaGraphConditionalHandleCreate, -1)
REFUSED(cudaGraphDestroy, -1)
REFUSED(cudaGraphExecDestroy, -1)
REFUSED(cudaGraphGetNodes, -1)
REFUSED(cudaGraphInstantiate, -1)
REFUSED(cudaGraphInstantiateWithFlags, -1)
REFUSED(cudaGraphLaunch, -1)
REFUSED(cudaGraphNodeGetDependencies, -1)
REFUSED(cudaGraphRetainUserObject, -1)
REFUSED(cudaUserObjectCreate, -1)
REFUSED(cudaUserObjectRelease, -1)
REFUSED(cudaLibraryLoadData, -1)
REFUSED(cudaLibraryLoadFromFile, -1)
REFUSED(cudaLibraryUnload, -1)
REFUSED(cudaLibraryGetKernel, -1)
REFUSED(cudaLibraryGetKernelCount, -1)
REFUSED(cudaLibraryGetGlobal, -1)
REFUSED(cudaLibraryGetManaged, -1)
REFUSED(cudaLibraryGetUnifiedFunction, -1)
