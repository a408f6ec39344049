/* hash.h -- the item hash "tch128-v2" (docs/hash.md): public engine interface.
 * Plain C, no Python.  Every function here is thread-safe once tc_hash_init()
 * has returned. */
#ifndef TC_HASH_H
#define TC_HASH_H

#include <stddef.h>
#include <stdint.h>

#define TC_HASH_LANES 32
#define TC_HASH_STRIPE_BYTES 256                    /* 32 lanes x 8 bytes */
#define TC_HASH_BLOCK_STRIPES 64
#define TC_HASH_BLOCK_BYTES (TC_HASH_STRIPE_BYTES * TC_HASH_BLOCK_STRIPES) /* 16 KiB */

typedef struct {
    uint64_t d1, d2;
} tc_digest;

/* One item as it lies in memory: `ndim` dims of `shape`, `strides` in elements. */
typedef struct {
    const uint8_t *base;
    size_t itemsize;
    int ndim;
    const int64_t *shape;
    const int64_t *strides;
    uint64_t dtype_word;   /* code | bits << 8 | lanes << 16 */
} tc_item;

/* Streaming state over an item's (or a sample's) byte stream. */
typedef struct {
    uint64_t t1, t2;       /* sums of block terms (docs/hash.md, section 4) */
    uint64_t nblocks;
    size_t fill;
    uint8_t buf[TC_HASH_BLOCK_BYTES];
} tc_hash_stream;

enum { TC_SIMD_PORTABLE = 0, TC_SIMD_AVX2 = 1, TC_SIMD_AVX512 = 2 };

void tc_hash_init(void);
/* The best level this CPU supports, and the one in use (they differ only when forced). */
int tc_hash_simd_best(void);
int tc_hash_simd_active(void);
const char *tc_hash_simd_name(int level);
/* Forces a level (for tests and benchmarks); returns -1 if the CPU lacks it. */
int tc_hash_simd_force(int level);

void tc_stream_init(tc_hash_stream *s);
void tc_stream_update(tc_hash_stream *s, const uint8_t *p, size_t n);
/* Finishes the stream with the item's metadata (docs/hash.md, section 5). */
tc_digest tc_stream_final(tc_hash_stream *s, uint64_t sample_count, const tc_item *item);

/* Digest of one item: every byte in logical row-major order when sample_count is
 * 0 or >= the element count, else the documented sample of sample_count
 * elements.  `s` is caller-provided scratch (it is large). */
tc_digest tc_hash_item(const tc_item *item, uint64_t sample_count, tc_hash_stream *s);

/* The pieces the threaded batch driver (hash_batch.c) and the GPU combine:
 * add block b's terms (docs/hash.md, section 4) to t[0], t[1]; and finish an
 * item from its term sums (section 5). */
void tc_block_terms(const uint8_t *p, size_t n, uint64_t b, uint64_t t[2]);
tc_digest tc_finish_item(uint64_t t1, uint64_t t2, uint64_t nblocks, uint64_t sample_count,
                         const tc_item *item);

/* A batch: item i starts at base + i * batch_stride bytes; all items share
 * shape, strides, itemsize and dtype (item.base is ignored). */
typedef struct {
    const uint8_t *base;
    int64_t batch_stride;
    int64_t batch;
    tc_item item;
} tc_batch;

/* Digests of every item into digests[2 * i], digests[2 * i + 1], on up to
 * `threads` threads (fewer for small batches).  Returns 0, or -1 if scratch
 * memory could not be had (digests are then unspecified). */
int tc_hash_batch(const tc_batch *x, uint64_t sample_count, int threads, uint64_t *digests);

/* Whose threads tc_hash_batch runs on: the path of the process's OpenMP runtime
 * (torch's libgomp) where one is loaded and usable, else "pthreads". */
const char *tc_hash_threads_runtime(void);
/* allow = 0: threads of our own even where an OpenMP runtime is loaded (tests,
 * and a way out); returns the previous setting. */
int tc_hash_threads_allow_openmp(int allow);

/* Constants shared with the CUDA engine. */
uint64_t tc_hash_key(uint64_t index);
uint64_t tc_fmix64(uint64_t z);
/* tch128-v1's block digest (h1, h2) of n bytes, 0 < n <= TC_HASH_BLOCK_BYTES, with the
 * active SIMD level: the store's payload checksum (docs/format.md), kept at v1 so that
 * stores written before tch128-v2 verify.  Not the item hash's block digest. */
void tc_hash_block(const uint8_t *p, size_t n, uint64_t h[2]);

#endif
