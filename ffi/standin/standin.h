/* The stand-in CUDA's shared model: what its three libraries (libcuda.so.1, libcudart.so.13,
 * libnvidia-ml.so.1) share. The device model lives in libcuda.so.1; the runtime and NVML
 * call into it, as the real ones call the real driver, so the same device is seen whichever
 * layer a program (or cudalloc's CudaBackend, or the preload shim) talks to.
 *
 * This header must not grow a second device model: state belongs in cuda.c. */
#ifndef CUDALLOC_STANDIN_H
#define CUDALLOC_STANDIN_H

#include <stddef.h>

#define STANDIN_EXPORT __attribute__((visibility("default")))

/* Every counted entry point, driver, runtime and NVML. The report at exit lists them in this
 * order; `standin_count(name)` reads one. */
#define STANDIN_COUNTERS(X)                                                                    \
    X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet)                         \
    X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent)                \
    X(cuCtxGetCurrent) X(cuCtxSynchronize) X(cuMemAlloc) X(cuMemFree) X(cuMemGetInfo)          \
    X(cuEventCreate) X(cuEventRecord) X(cuEventQuery) X(cuEventSynchronize)                    \
    X(cuEventDestroy) X(cuGetErrorName) X(cuGetErrorString) X(cuStreamCreate)                  \
    X(cuStreamDestroy) X(cuStreamSynchronize) X(cuMemAllocAsync) X(cuMemFreeAsync)             \
    X(cuGetProcAddress) X(cuStreamIsCapturing) X(cuCtxGetDevice)                               \
    X(cuMemGetAllocationGranularity) X(cuMemAddressReserve) X(cuMemAddressFree) X(cuMemCreate) \
    X(cuMemRelease) X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess) X(cuDeviceGetAttribute)        \
    X(cuPointerGetAttribute) X(cudaMalloc) X(cudaFree) X(cudaMallocAsync) X(cudaFreeAsync)     \
    X(cudaMemGetInfo) X(cudaMallocHost) X(cudaFreeHost) X(cudaStreamCreate)                    \
    X(cudaEventRecord) X(cudaGetDriverEntryPointByVersion) X(cudaLaunchKernel)                 \
    X(cudaMemcpy) X(cudaMemset) X(nvmlInit)

enum standin_counter {
#define STANDIN_ENUM(name) C_##name,
    STANDIN_COUNTERS(STANDIN_ENUM)
#undef STANDIN_ENUM
    C_COUNT
};

/* Exported by libcuda.so.1 for the other two libraries (and for tests). */
STANDIN_EXPORT void standin_count_add(int which);
STANDIN_EXPORT long long standin_count(const char *name);
/* Number of devices and their capacity in bytes (CUDALLOC_STANDIN_DEVICES, _CAPACITY). */
STANDIN_EXPORT int standin_device_count(void);
STANDIN_EXPORT size_t standin_capacity(void);
/* Bytes in use on a device (allocations and physical handles). */
STANDIN_EXPORT size_t standin_used(int dev);
/* The device owning a device address (an allocation or a mapped reserved range) and the
 * range's base; returns 0 if the address is not device memory. */
STANDIN_EXPORT int standin_lookup(unsigned long long ptr, int *dev, unsigned long long *base,
                                  size_t *size);
/* The calling thread's current device (its current context's), 0 when none is set. */
STANDIN_EXPORT int standin_current_device(void);
STANDIN_EXPORT void standin_set_current_device(int dev);

#endif
