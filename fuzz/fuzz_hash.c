/* fuzz_hash.c -- libFuzzer harness for the item hash (hash.h, docs/hash.md).
 *
 * The first bytes of the input choose an item layout (element size, dtype
 * word, up to 4 dimensions, a physical order of the dimensions, padding and
 * broadcast (stride 0) dimensions) and a sample count; the rest are the
 * element bytes.  Invariants checked, aborting on any difference:
 *   - every SIMD level this CPU has gives the portable digest (tc_hash_item and
 *     tc_hash_block over every tail length);
 *   - the digest depends on the logical elements only: the strided item and a
 *     compact row-major copy of it hash alike (docs/hash.md, section 1);
 *   - tc_hash_batch (one and two threads, at every level) gives each item's
 *     portable tc_hash_item digest; its batches of 37, 17, 11 and 6 items take
 *     every path of the kernels' item finish (AVX2: a group of 12, one of 4, then
 *     one item alone) and of items1 and itemsN (AVX2: passes of four groups of
 *     four, fewer groups, a remainder of 1 to 3 items; AVX-512: a pass of four
 *     groups of eight, fewer groups, a remainder of 1, 3, 5 or 6 items).  The
 *     items lie back to back, the last at the end of its buffer, so ASan sees a
 *     read past an item. */
#include "hash.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIMS 4
#define NITEMS 37
/* Bytes of the physical buffer an input may ask for (keeps each run fast). */
#define MAX_BUFFER_BYTES (1u << 18)

static tc_hash_stream stream;

typedef struct {
    size_t itemsize;
    uint64_t dtype_word;
    int ndim;
    int64_t shape[MAX_DIMS];
    int64_t strides[MAX_DIMS];
    uint64_t buffer_elems; /* elements the strided layout spans */
    uint64_t sample_count;
} layout;

static uint8_t take(const uint8_t **p, size_t *n)
{
    if (*n == 0)
        return 0;
    (*n)--;
    return *(*p)++;
}

/* Reads a layout from the control bytes; 0 if it asks for too much memory. */
static int read_layout(const uint8_t **p, size_t *n, layout *l)
{
    static const size_t sizes[] = {1, 2, 4, 8, 16, 3};
    uint8_t c = take(p, n);
    l->itemsize = sizes[c % 6];
    /* Any code and lane count: the dtype word is metadata to the hash. */
    l->dtype_word = (uint64_t)(c >> 3) | (uint64_t)(l->itemsize * 8 % 256) << 8 | 1ull << 16;
    l->ndim = take(p, n) % (MAX_DIMS + 1);
    uint8_t order = take(p, n), extra = take(p, n);
    for (int d = 0; d < l->ndim; d++)
        l->shape[d] = take(p, n) % 9;
    /* Physical order: dimension perm[0] is outermost in memory. */
    int perm[MAX_DIMS] = {0, 1, 2, 3};
    for (int d = l->ndim - 1; d > 0; d--) {
        int j = (order >> d) % (d + 1);
        int t = perm[d];
        perm[d] = perm[j];
        perm[j] = t;
    }
    uint64_t span = 1;
    for (int k = l->ndim - 1; k >= 0; k--) {
        int d = perm[k];
        int broadcast = (extra >> d) & 1;
        int64_t pad = (extra >> (4 + d)) & 1 ? 1 + d : 0;
        if (broadcast) {
            l->strides[d] = 0;
            continue;
        }
        l->strides[d] = (int64_t)span;
        span *= (uint64_t)(l->shape[d] + pad);
    }
    l->buffer_elems = span;
    uint16_t sc = (uint16_t)(take(p, n) | take(p, n) << 8);
    l->sample_count = sc % 3 == 0 ? 0 : sc % 1024;
    return span * l->itemsize <= MAX_BUFFER_BYTES;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_hash: %s\n", what);
        abort();
    }
}

static tc_digest hash_at(const tc_item *item, uint64_t sample_count, int level)
{
    check(tc_hash_simd_force(level) == 0, "cannot force a level below the best");
    return tc_hash_item(item, sample_count, &stream);
}

static int same(tc_digest a, tc_digest b)
{
    return a.d1 == b.d1 && a.d2 == b.d2;
}

/* Copies the item's elements in logical row-major order into out. */
static void compact_copy(const tc_item *it, uint8_t *out)
{
    int64_t idx[MAX_DIMS] = {0};
    uint64_t numel = 1;
    for (int d = 0; d < it->ndim; d++)
        numel *= (uint64_t)it->shape[d];
    for (uint64_t e = 0; e < numel; e++) {
        int64_t off = 0;
        for (int d = 0; d < it->ndim; d++)
            off += idx[d] * it->strides[d];
        memcpy(out + e * it->itemsize, it->base + off * (int64_t)it->itemsize, it->itemsize);
        for (int d = it->ndim - 1; d >= 0 && ++idx[d] == it->shape[d]; d--)
            idx[d] = 0;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    tc_hash_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int best = tc_hash_simd_best();

    /* Block digests of the raw input at every level, every tail length. */
    size_t blen = size < TC_HASH_BLOCK_BYTES ? size : TC_HASH_BLOCK_BYTES;
    if (blen > 0) {
        uint64_t ref[2], h[2];
        tc_hash_simd_force(TC_SIMD_PORTABLE);
        tc_hash_block(data, blen, ref);
        for (int level = TC_SIMD_PORTABLE + 1; level <= best; level++) {
            tc_hash_simd_force(level);
            tc_hash_block(data, blen, h);
            check(h[0] == ref[0] && h[1] == ref[1], "tc_hash_block differs between levels");
        }
    }

    const uint8_t *p = data;
    size_t n = size;
    layout l;
    if (!read_layout(&p, &n, &l))
        return 0;
    size_t bytes = (size_t)(l.buffer_elems * l.itemsize);
    /* NITEMS items back to back for the batch check, each exactly sized so the
     * sanitizer sees any read past an item. */
    uint8_t *buf = malloc(NITEMS * bytes + 1);
    check(buf != NULL, "out of memory");
    for (size_t i = 0; i < NITEMS * bytes; i++)
        buf[i] = n ? p[i % n] ^ (uint8_t)(i / (n ? n : 1)) : (uint8_t)i;

    tc_item item = {buf, l.itemsize, l.ndim, l.shape, l.strides, l.dtype_word};
    tc_digest ref = hash_at(&item, l.sample_count, TC_SIMD_PORTABLE);
    for (int level = TC_SIMD_PORTABLE + 1; level <= best; level++)
        check(same(hash_at(&item, l.sample_count, level), ref),
              "tc_hash_item differs between SIMD levels");

    uint64_t numel = 1;
    for (int d = 0; d < l.ndim; d++)
        numel *= (uint64_t)l.shape[d];
    uint8_t *flat = malloc(numel * l.itemsize + 1);
    check(flat != NULL, "out of memory");
    compact_copy(&item, flat);
    int64_t cstrides[MAX_DIMS];
    int64_t run = 1;
    for (int d = l.ndim - 1; d >= 0; d--) {
        cstrides[d] = run;
        run *= l.shape[d];
    }
    tc_item compact = {flat, l.itemsize, l.ndim, l.shape, cstrides, l.dtype_word};
    check(same(hash_at(&compact, l.sample_count, best), ref),
          "a strided item and its compact copy hash differently");

    tc_batch batch = {buf, (int64_t)bytes, NITEMS, item};
    uint64_t want[2 * NITEMS], digests[2 * NITEMS];
    for (int i = 0; i < NITEMS; i++) {
        tc_item one = item;
        one.base = buf + (size_t)i * bytes;
        tc_digest d = hash_at(&one, l.sample_count, TC_SIMD_PORTABLE);
        want[2 * i] = d.d1;
        want[2 * i + 1] = d.d2;
    }
    /* The first 37, 17, 11 and 6 items (items1, itemsN): AVX2's whole passes of
     * four groups of four, fewer groups, and groups plus a remainder of 1, 1, 3
     * and 2 items; AVX-512's pass of four groups of eight plus 5 items, two
     * groups plus 1, one plus 3, and 6 items alone. */
    static const int counts[] = {NITEMS, 17, 11, 6};
    for (int level = TC_SIMD_PORTABLE; level <= best; level++) {
        check(tc_hash_simd_force(level) == 0, "cannot force a level below the best");
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
            batch.batch = counts[c];
            for (int threads = 1; threads <= 2; threads++) {
                check(tc_hash_batch(&batch, l.sample_count, threads, digests) == 0,
                      "batch failed");
                check(memcmp(digests, want, 2 * sizeof(uint64_t) * (size_t)counts[c]) == 0,
                      "tc_hash_batch differs from the portable tc_hash_item");
            }
        }
    }
    free(flat);
    free(buf);
    return 0;
}
