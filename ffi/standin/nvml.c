/* The stand-in NVML, libnvidia-ml.so.1: just what PyTorch asks of NVML (device handles, the
 * driver version, memory information, and the NVLink/fabric probes of expandable segments,
 * answered "not supported"), over the stand-in driver's device model (cuda.c).
 *
 * nvmlDeviceGetGpuFabricInfoV is deliberately absent: PyTorch reads its absence as "no
 * fabric", so expandable segments use plain POSIX file-descriptor handles. This file keeps
 * no device state. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "standin.h"

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
#define EXPORT STANDIN_EXPORT

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_NOT_FOUND = 6,
};

/* A device handle is the device index + 1 disguised as a pointer. */
static int index_of(nvmlDevice_t d) {
    int i = (int)(uintptr_t)d - 1;
    return i >= 0 && i < standin_device_count() ? i : -1;
}
EXPORT nvmlReturn_t nvmlInit_v2(void) {
    standin_count_add(C_nvmlInit);
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    return nvmlInit_v2();
}
EXPORT nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
EXPORT const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported (cudalloc stand-in NVML)";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    default: return "Unknown Error";
    }
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = 13000;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { return nvmlSystemGetCudaDriverVersion_v2(v); }
EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned len) {
    if (!v || len < 8) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(v, len, "580.0-standin");
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *n) {
    if (!n) return NVML_ERROR_INVALID_ARGUMENT;
    *n = (unsigned)standin_device_count();
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned i, nvmlDevice_t *d) {
    if (!d || (int)i >= standin_device_count()) return NVML_ERROR_INVALID_ARGUMENT;
    *d = (nvmlDevice_t)(uintptr_t)(i + 1);
    return NVML_SUCCESS;
}
/* Bus ids are the runtime's: "00000000:NN:00.0" with NN the device index + 1. */
EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus, nvmlDevice_t *d) {
    unsigned dom = 0, b = 0;
    if (!bus || !d || sscanf(bus, "%x:%x", &dom, &b) != 2) return NVML_ERROR_INVALID_ARGUMENT;
    if (b < 1 || (int)b > standin_device_count()) return NVML_ERROR_NOT_FOUND;
    *d = (nvmlDevice_t)(uintptr_t)b;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned *i) {
    if (!i || index_of(d) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *i = (unsigned)index_of(d);
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned len) {
    if (!name || !len || index_of(d) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, len, "cudalloc stand-in device (no compute)");
    return NVML_SUCCESS;
}
struct nvml_memory { unsigned long long total, free, used; };
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, struct nvml_memory *m) {
    int i = index_of(d);
    if (!m || i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    m->total = standin_capacity();
    m->used = standin_used(i);
    m->free = m->used < m->total ? m->total - m->used : 0;
    return NVML_SUCCESS;
}
/* No process list: the stand-in device has no processes of its own to show. */
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned *count, void *infos) {
    (void)infos;
    if (!count || index_of(d) < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned *count, void *infos) {
    return nvmlDeviceGetComputeRunningProcesses(d, count, infos);
}
/* No NVLink. */
EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t d, unsigned link, int *type) {
    (void)d;
    (void)link;
    (void)type;
    return NVML_ERROR_NOT_SUPPORTED;
}
EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t d, unsigned link, void *pci) {
    (void)d;
    (void)link;
    (void)pci;
    return NVML_ERROR_NOT_SUPPORTED;
}
EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t d, unsigned link, int *active) {
    (void)d;
    (void)link;
    (void)active;
    return NVML_ERROR_NOT_SUPPORTED;
}
