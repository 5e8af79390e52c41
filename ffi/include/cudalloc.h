/* cudalloc: a caching CUDA device-memory allocator — C interface.
 *
 * Link with -lcudalloc (libcudalloc.so or libcudalloc.a). Self-contained: needs no CUDA
 * header. The allocator is created on first use from the environment:
 *   CUDALLOC_CONF          configuration, PYTORCH_CUDA_ALLOC_CONF syntax (strict); when
 *                          unset, the supported keys of PYTORCH_CUDA_ALLOC_CONF apply
 *   CUDALLOC_BACKEND       cuda (default) or sim (a simulated device in host memory)
 *   CUDALLOC_SIM_CAPACITY  capacity of each simulated device (e.g. 24GiB; default 16GiB)
 *   CUDALLOC_SIM_DEVICES   number of simulated devices (default 1)
 *
 * Errors: functions returning int return a cudalloc_status; those returning a pointer
 * return NULL. Either way cudalloc_last_error() then says what went wrong, on this thread.
 * No function crashes or corrupts the allocator on bad input; panics never cross into C.
 * All functions are thread-safe. */
#ifndef CUDALLOC_H
#define CUDALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The CUDA stream type, opaque here; the same type as CUDA's own cudaStream_t/CUstream. */
#ifndef CUDALLOC_NO_STREAM_TYPEDEF
#if !defined(__CUDA_RUNTIME_API_H__) && !defined(__DRIVER_TYPES_H__)
typedef struct CUstream_st *cudaStream_t;
#endif
#endif

/* Status codes. Values are stable. */
typedef enum cudalloc_status {
    CUDALLOC_OK = 0,
    CUDALLOC_ERROR_NULL_ARGUMENT = 1,      /* a required pointer argument was NULL */
    CUDALLOC_ERROR_INVALID_ARGUMENT = 2,   /* negative/impossible size, bad fraction, ... */
    CUDALLOC_ERROR_INVALID_DEVICE = 3,     /* no such device */
    CUDALLOC_ERROR_UNKNOWN_POINTER = 4,    /* not allocated by cudalloc, or already freed */
    CUDALLOC_ERROR_OUT_OF_MEMORY = 5,      /* nothing fits even after releasing the cache */
    CUDALLOC_ERROR_CONFIG = 6,             /* bad configuration string */
    CUDALLOC_ERROR_ALREADY_INITIALIZED = 7,/* cudalloc_configure after the allocator started */
    CUDALLOC_ERROR_DRIVER = 8,             /* a CUDA driver error other than out of memory */
    CUDALLOC_ERROR_INIT = 9,               /* the backend could not be started */
    CUDALLOC_ERROR_STRUCT_SIZE = 10,       /* the stated struct size is too small */
    CUDALLOC_ERROR_IO = 11,                /* a file could not be written */
    CUDALLOC_ERROR_INTERNAL = 99           /* a bug in cudalloc (caught panic) */
} cudalloc_status;

/* ---- PyTorch's CUDAPluggableAllocator pair ---- */

/* Allocate size bytes on device for use on stream. size 0 returns NULL and is not an
 * error (cudalloc_last_error() is NULL then). */
void *cudalloc_malloc(ssize_t size, int device, cudaStream_t stream);

/* Free a pointer from cudalloc_malloc. The block returns to the stream it was allocated on;
 * stream is where the pointer is looked for first (PyTorch passes the allocation's stream;
 * another stream only costs a search). size is not used. NULL does nothing. */
void cudalloc_free(void *ptr, ssize_t size, int device, cudaStream_t stream);

/* ---- CuPy's CFunctionAllocator pair (param is unused; the default stream is used) ---- */

void *cudalloc_cupy_malloc(void *param, size_t size, int device);
void cudalloc_cupy_free(void *param, void *ptr, int device);

/* ---- Management ---- */

/* Mark ptr as used on another stream: on free it waits for that stream's queued work. */
int cudalloc_record_stream(void *ptr, int device, cudaStream_t stream);

/* PyTorch's record_stream hook (CUDAPluggableAllocator::set_record_stream_fn): the same as
 * cudalloc_record_stream, with the device found from ptr. */
int cudalloc_record_stream_any(void *ptr, cudaStream_t stream);

/* PyTorch's base-allocation hook (set_base_alloc_fn, used for CUDA IPC): the start of the
 * driver allocation (segment) holding ptr, with its size in *size; NULL (and *size untouched)
 * if ptr is not inside a live cudalloc allocation. With expandable segments the segment is one
 * mapped run of the virtual range, which CUDA IPC cannot share. */
void *cudalloc_base_allocation(void *ptr, size_t *size);

/* Return every entirely free cached segment to the driver; device -1: all devices. */
int cudalloc_empty_cache(int device);

/* Limit the allocator to fraction (0..1) of the device's memory. */
int cudalloc_set_memory_fraction(double fraction, int device);

/* One statistic: PyTorch's current/peak/allocated/freed. */
typedef struct cudalloc_stat {
    int64_t current;
    int64_t peak;
    int64_t allocated;
    int64_t freed;
} cudalloc_stat_t;

#define CUDALLOC_STATS_VERSION 1

/* Statistics with PyTorch's names; arrays are indexed [all, small_pool, large_pool].
 * Versioned: the caller passes sizeof(cudalloc_stats_t) as it knows it; the library fills
 * that many bytes at most (newer fields are appended, never reordered) and sets
 * struct_size to the bytes it filled and version to CUDALLOC_STATS_VERSION. */
typedef struct cudalloc_stats {
    size_t struct_size;
    uint32_t version;
    uint32_t reserved_padding;
    cudalloc_stat_t allocation[3];
    cudalloc_stat_t segment[3];
    cudalloc_stat_t active[3];
    cudalloc_stat_t inactive_split[3];
    cudalloc_stat_t allocated_bytes[3];
    cudalloc_stat_t reserved_bytes[3];
    cudalloc_stat_t active_bytes[3];
    cudalloc_stat_t inactive_split_bytes[3];
    cudalloc_stat_t requested_bytes[3];
    cudalloc_stat_t oversize_allocations;
    cudalloc_stat_t oversize_segments;
    uint64_t num_alloc_retries;
    uint64_t num_ooms;
    uint64_t num_sync_all_streams;
    uint64_t num_device_alloc;
    uint64_t num_device_free;
    int64_t max_split_size; /* -1: unlimited */
} cudalloc_stats_t;

/* Fill *out (out_size: the caller's sizeof(cudalloc_stats_t), at least 16). */
int cudalloc_get_stats(int device, cudalloc_stats_t *out, size_t out_size);

/* Peaks back to current values. */
int cudalloc_reset_peak_stats(int device);

/* Accumulated counters (allocated, freed, retries, OOMs, driver calls) to zero. */
int cudalloc_reset_accumulated_stats(int device);

/* The memory summary (PyTorch's table plus fragmentation lines). Returns the bytes needed
 * including the terminating NUL, and writes buf only when len is at least that; 0 on error. */
size_t cudalloc_memory_summary(int device, char *buf, size_t len);

/* Configure (CUDALLOC_CONF syntax) before the allocator is first used; afterwards
 * CUDALLOC_ERROR_ALREADY_INITIALIZED. */
int cudalloc_configure(const char *conf);

/* Start (enabled != 0) or stop recording the event history, at most max_entries per device. */
int cudalloc_record_history(int enabled, size_t max_entries);

/* Tag the history entries the calling thread records from now on with context (0: none), a
 * caller's id for the call stack behind them; snapshots carry it as "cudalloc_context" in
 * each trace entry (the PyTorch glue turns it into Python frames). Never fails. */
void cudalloc_set_history_context(uint64_t context);

/* Write a PyTorch-format memory snapshot (segments, blocks, event history) to path. */
int cudalloc_dump_snapshot(const char *path);

/* The last error on this thread (valid until the next cudalloc call on it), or NULL. */
const char *cudalloc_last_error(void);

/* The status of the last call on this thread that failed (CUDALLOC_OK when the last call
 * succeeded): tells a NULL from cudalloc_malloc that is out of memory from any other. */
int cudalloc_last_status(void);

/* The library version, e.g. "0.1.0". */
const char *cudalloc_version(void);

#ifdef __cplusplus
}
#endif

#endif /* CUDALLOC_H */
