/* A C client of libcudalloc exercising every function of cudalloc.h and each bad input.
 * Run with CUDALLOC_BACKEND=sim CUDALLOC_SIM_CAPACITY=256MiB. Exit status 0 = all passed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cudalloc.h"

static int failures = 0;
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "FAILED line %d: %s (last error: %s)\n", __LINE__, #cond, \
                    cudalloc_last_error() ? cudalloc_last_error() : "none");         \
            failures++;                                                              \
        }                                                                            \
    } while (0)

static int error_mentions(const char *what) {
    const char *e = cudalloc_last_error();
    return e != NULL && strstr(e, what) != NULL;
}

static void *worker(void *arg) {
    cudaStream_t s = (cudaStream_t)arg;
    for (int i = 0; i < 2000; i++) {
        size_t n = 512 + (size_t)(i % 17) * 4096;
        unsigned char *p = cudalloc_malloc((ssize_t)n, 0, s);
        if (!p) return (void *)1;
        memset(p, (int)(i & 0xff), n);
        if (p[n - 1] != (unsigned char)(i & 0xff)) return (void *)1;
        cudalloc_free(p, (ssize_t)n, 0, s);
    }
    return NULL;
}

int main(void) {
    CHECK(cudalloc_version() != NULL && strlen(cudalloc_version()) > 0);
    CHECK(cudalloc_last_error() == NULL);

    /* Configuration before first use: bad ones are refused with key and position. */
    CHECK(cudalloc_configure(NULL) == CUDALLOC_ERROR_NULL_ARGUMENT);
    CHECK(cudalloc_configure("max_split_size_mb:5") == CUDALLOC_ERROR_CONFIG);
    CHECK(error_mentions("max_split_size_mb") && error_mentions("position"));
    CHECK(cudalloc_configure("no_such_key:1") == CUDALLOC_ERROR_CONFIG);
    CHECK(cudalloc_configure("expandable_segments:maybe") == CUDALLOC_ERROR_CONFIG);
    CHECK(cudalloc_configure("max_split_size_mb:64,garbage_collection_threshold:0.8") == CUDALLOC_OK);
    CHECK(cudalloc_last_error() == NULL);

    /* Size 0 is NULL without an error; negative sizes and bad devices are errors. */
    CHECK(cudalloc_malloc(0, 0, NULL) == NULL);
    CHECK(cudalloc_last_error() == NULL);
    CHECK(cudalloc_malloc(-5, 0, NULL) == NULL);
    CHECK(error_mentions("negative"));
    CHECK(cudalloc_last_status() == CUDALLOC_ERROR_INVALID_ARGUMENT);
    CHECK(cudalloc_malloc(100, 7, NULL) == NULL);
    CHECK(error_mentions("device 7"));
    CHECK(cudalloc_malloc(100, -1, NULL) == NULL);

    unsigned char *p = cudalloc_malloc(1 << 20, 0, NULL);
    CHECK(p != NULL);
    memset(p, 0x5a, 1 << 20);
    CHECK(cudalloc_configure("max_split_size_mb:128") == CUDALLOC_ERROR_ALREADY_INITIALIZED);

    /* Statistics, versioned struct. */
    cudalloc_stats_t st;
    memset(&st, 0, sizeof st);
    CHECK(cudalloc_get_stats(0, &st, sizeof st) == CUDALLOC_OK);
    CHECK(st.struct_size == sizeof st);
    CHECK(st.version == CUDALLOC_STATS_VERSION);
    CHECK(st.allocation[0].current == 1);
    CHECK(st.allocated_bytes[0].current == 1 << 20);
    CHECK(st.requested_bytes[0].current == 1 << 20);
    CHECK(st.reserved_bytes[0].current == 2 << 20);
    CHECK(st.num_device_alloc == 1);
    CHECK(st.max_split_size == 64LL << 20);
    CHECK(cudalloc_get_stats(0, NULL, sizeof st) == CUDALLOC_ERROR_NULL_ARGUMENT);
    CHECK(cudalloc_get_stats(0, &st, 8) == CUDALLOC_ERROR_STRUCT_SIZE);
    CHECK(cudalloc_get_stats(3, &st, sizeof st) == CUDALLOC_ERROR_INVALID_DEVICE);
    /* An older, shorter struct: filled up to its size only. */
    {
        unsigned char buf[sizeof st + 16];
        memset(buf, 0xee, sizeof buf);
        size_t old = offsetof(cudalloc_stats_t, segment);
        CHECK(cudalloc_get_stats(0, (cudalloc_stats_t *)buf, old) == CUDALLOC_OK);
        CHECK(((cudalloc_stats_t *)buf)->struct_size == old);
        CHECK(buf[old] == 0xee);
    }

    /* record_stream */
    CHECK(cudalloc_record_stream(p, 0, (cudaStream_t)0x10) == CUDALLOC_OK);
    CHECK(cudalloc_record_stream(NULL, 0, NULL) == CUDALLOC_ERROR_NULL_ARGUMENT);
    CHECK(cudalloc_record_stream((void *)0x1234, 0, NULL) == CUDALLOC_ERROR_UNKNOWN_POINTER);
    CHECK(cudalloc_last_status() == CUDALLOC_ERROR_UNKNOWN_POINTER);
    CHECK(cudalloc_record_stream_any(p, (cudaStream_t)0x20) == CUDALLOC_OK);
    CHECK(cudalloc_last_status() == CUDALLOC_OK);
    CHECK(cudalloc_record_stream_any(NULL, NULL) == CUDALLOC_ERROR_NULL_ARGUMENT);
    CHECK(cudalloc_record_stream_any((void *)0x1234, NULL) == CUDALLOC_ERROR_UNKNOWN_POINTER);
    CHECK(error_mentions("not allocated by cudalloc"));

    /* base allocation: p (1 MiB) lies in the one 2 MiB segment reserved so far */
    size_t seg = 0;
    unsigned char *base = cudalloc_base_allocation(p, &seg);
    CHECK(base != NULL && base <= p && p + (1 << 20) <= base + seg);
    CHECK(seg == 2 << 20);
    seg = 7;
    CHECK(cudalloc_base_allocation((void *)0x1234, &seg) == NULL && seg == 7);
    CHECK(cudalloc_last_status() == CUDALLOC_ERROR_UNKNOWN_POINTER);
    CHECK(cudalloc_base_allocation(p, NULL) == NULL);
    CHECK(cudalloc_last_status() == CUDALLOC_ERROR_NULL_ARGUMENT);
    CHECK(cudalloc_record_stream(p, 9, NULL) == CUDALLOC_ERROR_INVALID_DEVICE);

    /* Free: NULL does nothing; unknown pointers and double frees are reported, not fatal. */
    cudalloc_free(NULL, 0, 0, NULL);
    CHECK(cudalloc_last_error() == NULL);
    CHECK(p[12345] == 0x5a);
    cudalloc_free(p, 1 << 20, 0, NULL);
    CHECK(cudalloc_last_error() == NULL);
    cudalloc_free(p, 1 << 20, 0, NULL);
    CHECK(error_mentions("already freed"));
    cudalloc_free((void *)0xdeadbeef, 16, 0, NULL);
    CHECK(error_mentions("not allocated by cudalloc"));
    CHECK(cudalloc_get_stats(0, &st, sizeof st) == CUDALLOC_OK);
    CHECK(st.allocation[0].current == 0);

    /* Summary: the needed length, written only when it fits. */
    size_t need = cudalloc_memory_summary(0, NULL, 0);
    CHECK(need > 100);
    char small[16];
    memset(small, 'x', sizeof small);
    CHECK(cudalloc_memory_summary(0, small, sizeof small) == need);
    CHECK(small[0] == 'x');
    char *text = malloc(need);
    CHECK(cudalloc_memory_summary(0, text, need) == need);
    CHECK(strlen(text) == need - 1);
    CHECK(strstr(text, "memory summary") != NULL && strstr(text, "Fragmentation") != NULL);
    free(text);
    CHECK(cudalloc_memory_summary(4, NULL, 0) == 0);
    CHECK(error_mentions("device 4"));

    /* Resets, fraction, empty_cache. */
    CHECK(cudalloc_reset_peak_stats(0) == CUDALLOC_OK);
    CHECK(cudalloc_reset_accumulated_stats(0) == CUDALLOC_OK);
    CHECK(cudalloc_reset_peak_stats(2) == CUDALLOC_ERROR_INVALID_DEVICE);
    CHECK(cudalloc_get_stats(0, &st, sizeof st) == CUDALLOC_OK);
    CHECK(st.num_device_alloc == 0 && st.allocation[0].allocated == 0);
    CHECK(cudalloc_set_memory_fraction(2.0, 0) == CUDALLOC_ERROR_INVALID_ARGUMENT);
    CHECK(cudalloc_set_memory_fraction(0.5, 0) == CUDALLOC_OK);
    CHECK(cudalloc_empty_cache(-1) == CUDALLOC_OK);
    CHECK(cudalloc_empty_cache(0) == CUDALLOC_OK);
    CHECK(cudalloc_empty_cache(5) == CUDALLOC_ERROR_INVALID_DEVICE);
    CHECK(cudalloc_get_stats(0, &st, sizeof st) == CUDALLOC_OK);
    CHECK(st.reserved_bytes[0].current == 0);

    /* Out of memory: the limit is half of 256 MiB. */
    CHECK(cudalloc_malloc(200 << 20, 0, NULL) == NULL);
    CHECK(cudalloc_last_status() == CUDALLOC_ERROR_OUT_OF_MEMORY);
    CHECK(error_mentions("CUDA out of memory"));
    CHECK(cudalloc_get_stats(0, &st, sizeof st) == CUDALLOC_OK);
    CHECK(st.num_ooms == 1);

    /* CuPy's pair. */
    void *c = cudalloc_cupy_malloc(NULL, 4096, 0);
    CHECK(c != NULL);
    cudalloc_cupy_free(NULL, c, 0);
    CHECK(cudalloc_last_error() == NULL);
    CHECK(cudalloc_cupy_malloc(NULL, 16, 3) == NULL);

    /* History and snapshot. */
    CHECK(cudalloc_record_history(1, 1000) == CUDALLOC_OK);
    void *h = cudalloc_malloc(3000, 0, NULL);
    cudalloc_free(h, 3000, 0, NULL);
    const char *snap = getenv("SNAPSHOT_PATH");
    if (snap) CHECK(cudalloc_dump_snapshot(snap) == CUDALLOC_OK);
    CHECK(cudalloc_dump_snapshot(NULL) == CUDALLOC_ERROR_NULL_ARGUMENT);
    CHECK(cudalloc_dump_snapshot("/nonexistent-dir/x/snap.pickle") == CUDALLOC_ERROR_IO);

    /* Threads on their own streams. */
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)(i * 16 + 16));
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        CHECK(r == NULL);
    }
    CHECK(cudalloc_get_stats(0, &st, sizeof st) == CUDALLOC_OK);
    CHECK(st.allocation[0].current == 0);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("c client: all checks passed\n");
    return 0;
}
