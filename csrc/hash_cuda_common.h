/* hash_cuda_common.h -- what the CUDA kernels (hash_cuda.cu) and their host
 * launcher (cuda.c) share: the kernel argument structs, the plan that cuts a
 * batch into launches, and the tch128-v2 arithmetic (docs/hash.md) as inline
 * __host__ __device__ functions.
 *
 * It is valid C11 and valid CUDA C++, so the launcher and the kernels agree on
 * every struct layout, and the very code the kernels run can be run on a CPU
 * by tests/cuda_host/check_common.cu against the reference in hash.c.
 * Nothing here allocates, launches or touches the driver. */
#ifndef TC_HASH_CUDA_COMMON_H
#define TC_HASH_CUDA_COMMON_H

#include <stdint.h>

#include "hash_internal.h"

#ifdef __CUDACC__
#define TC_HD static __host__ __device__ __forceinline__
#else
#define TC_HD static inline
#endif

#define TC_CU_MAX_DIMS 32        /* = TC_MAX_NDIM of dlpack.h */
#define TC_CU_WARPS_PER_CTA 8    /* hash kernel: one warp per 16 KiB block */
#define TC_CU_STRIPE_KEYS (2 * TC_HASH_BLOCK_STRIPES) /* KS1[0..63] then KS2[0..63] */
/* Scratch items are laid out at this pitch so that every gathered item starts
 * 8-byte aligned and the hash kernel takes its aligned path. */
#define TC_CU_SCRATCH_PITCH 256

/* ---- arithmetic (docs/hash.md, sections 2-5; mirrors hash.c line by line) ---- */

TC_HD uint64_t tc_cu_rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

TC_HD uint64_t tc_cu_fmix64(uint64_t z)
{
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdULL;
    z ^= z >> 33;
    z *= 0xc4ceb9fe1a85ec53ULL;
    z ^= z >> 33;
    return z;
}

/* key(i): the i-th output of SplitMix64 seeded with "tch128v1" (tc_hash_key). */
TC_HD uint64_t tc_cu_key(uint64_t index)
{
    uint64_t z = 0x7463683132387631ULL + (index + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* One hash lane's state while it walks the stripes of a block. */
typedef struct {
    uint64_t a, c;     /* the two accumulators */
    uint64_t kl1, kl2; /* lane keys KL1[j], KL2[j] */
} tc_cu_lane;

TC_HD void tc_cu_lane_init(tc_cu_lane *st, unsigned lane)
{
    st->a = tc_cu_key(TC_K_IV1 + lane);
    st->c = tc_cu_key(TC_K_IV2 + lane);
    st->kl1 = tc_cu_key(TC_K_LANE1 + lane);
    st->kl2 = tc_cu_key(TC_K_LANE2 + lane);
}

TC_HD void tc_cu_absorb(tc_cu_lane *st, uint64_t w, uint64_t ks1, uint64_t ks2)
{
    uint64_t k1 = w ^ st->kl1 ^ ks1;
    uint64_t k2 = w ^ st->kl2 ^ ks2;
    st->a += w + (k1 & 0xffffffffULL) * (k1 >> 32);
    st->c += (k2 & 0xffffffffULL) * (k2 >> 32);
}

/* An aligned 64-bit load; on the device through the read-only data path. */
TC_HD uint64_t tc_cu_load_aligned(const uint8_t *p)
{
#ifdef __CUDA_ARCH__
    return __ldg((const unsigned long long *)p);
#else
    return *(const uint64_t *)p;
#endif
}

/* The little-endian word at p, all 8 bytes inside the item, p misaligned by
 * `mis` bytes (0..7).  A misaligned word is put together from the two aligned
 * words that hold it: both hold bytes of the item, so neither load can leave
 * the item's allocation (allocations are at least 256-byte aligned). */
TC_HD uint64_t tc_cu_load_word(const uint8_t *p, unsigned mis)
{
    if (mis == 0)
        return tc_cu_load_aligned(p);
    uint64_t lo = tc_cu_load_aligned(p - mis);
    uint64_t hi = tc_cu_load_aligned(p - mis + 8);
    return (lo >> (8 * mis)) | (hi << (64 - 8 * mis));
}

/* The first `valid` bytes (0..8) at p, zero-padded: the tail of the last
 * stripe (docs/hash.md, section 3).  Byte loads never read past the item. */
TC_HD uint64_t tc_cu_load_partial(const uint8_t *p, unsigned valid)
{
    uint64_t w = 0;
    for (unsigned i = 0; i < valid; i++)
        w |= (uint64_t)p[i] << (8 * i);
    return w;
}

/* Lane `lane`'s share of the block digest of the n bytes at p (0 < n <= 16 KiB),
 * as tc_hash_block computes it: whole stripes, then the zero-padded last stripe
 * if n is not a multiple of 256; stripes wholly past n are not absorbed.
 * ks holds KS1[0..63] then KS2[0..63].  The block digest is the sum of the
 * (h1, h2) of the 32 lanes. */
TC_HD void tc_cu_lane_block(const uint8_t *p, uint64_t n, unsigned lane, const uint64_t *ks,
                            uint64_t *h1, uint64_t *h2)
{
    tc_cu_lane st;
    tc_cu_lane_init(&st, lane);
    unsigned full = (unsigned)(n / TC_HASH_STRIPE_BYTES);
    unsigned rest = (unsigned)(n % TC_HASH_STRIPE_BYTES);
    unsigned mis = (unsigned)((uintptr_t)p & 7);
    const uint8_t *q = p + 8 * lane;
    if (mis == 0) {
#ifdef __CUDA_ARCH__
#pragma unroll 8
#endif
        for (unsigned s = 0; s < full; s++)
            tc_cu_absorb(&st, tc_cu_load_aligned(q + (uint64_t)s * TC_HASH_STRIPE_BYTES), ks[s],
                         ks[TC_HASH_BLOCK_STRIPES + s]);
    } else {
#ifdef __CUDA_ARCH__
#pragma unroll 8
#endif
        for (unsigned s = 0; s < full; s++)
            tc_cu_absorb(&st, tc_cu_load_word(q + (uint64_t)s * TC_HASH_STRIPE_BYTES, mis), ks[s],
                         ks[TC_HASH_BLOCK_STRIPES + s]);
    }
    if (rest) {
        const uint8_t *t = q + (uint64_t)full * TC_HASH_STRIPE_BYTES;
        unsigned valid = rest > 8 * lane ? rest - 8 * lane : 0;
        uint64_t w = valid >= 8 ? tc_cu_load_word(t, mis) : tc_cu_load_partial(t, valid);
        tc_cu_absorb(&st, w, ks[full], ks[TC_HASH_BLOCK_STRIPES + full]);
    }
    /* tch128-v2's lane finish: one fmix64, for the first accumulator. */
    *h1 = tc_cu_fmix64(st.a ^ tc_cu_key(TC_K_FIN1 + lane));
    *h2 = st.c ^ tc_cu_key(TC_K_FIN2 + lane);
}

/* Block b's terms of the item's sums (docs/hash.md, section 4).  Sums mod 2^64
 * do not depend on order: blocks are hashed in parallel and added atomically. */
TC_HD uint64_t tc_cu_block_term1(uint64_t h1, uint64_t b)
{
    return tc_cu_fmix64(h1 ^ tc_cu_fmix64(b + tc_cu_key(TC_K_BLOCK1)));
}

TC_HD uint64_t tc_cu_block_term2(uint64_t h2, uint64_t b)
{
    return tc_cu_fmix64(h2 ^ tc_cu_fmix64(b + tc_cu_key(TC_K_BLOCK2)));
}

TC_HD void tc_cu_meta_absorb(uint64_t *s1, uint64_t *s2, uint64_t m)
{
    *s1 = tc_cu_fmix64(*s1 ^ m) + 0x9E3779B97F4A7C15ULL;
    *s2 = tc_cu_fmix64(*s2 ^ tc_cu_rotl64(m, 32)) + 0x9E3779B97F4A7C15ULL;
}

/* The metadata finish of tc_stream_final (docs/hash.md, section 5): t[0], t[1]
 * are the item's sums of block terms; the digest replaces them.  The metadata
 * digest (M1, M2) is the same for every item; each thread forms it (a few
 * dozen multiplies, nothing against the blocks). */
TC_HD void tc_cu_finish(uint64_t t[2], uint64_t sample_count, uint64_t dtype_word,
                        uint64_t nbytes, uint64_t nblocks, int ndim, const int64_t *shape)
{
    uint64_t m1 = tc_cu_key(TC_K_SEED1);
    uint64_t m2 = tc_cu_key(TC_K_SEED2);
    tc_cu_meta_absorb(&m1, &m2, sample_count);
    tc_cu_meta_absorb(&m1, &m2, dtype_word);
    tc_cu_meta_absorb(&m1, &m2, nbytes);
    tc_cu_meta_absorb(&m1, &m2, nblocks);
    tc_cu_meta_absorb(&m1, &m2, (uint64_t)ndim);
    for (int d = 0; d < ndim; d++)
        tc_cu_meta_absorb(&m1, &m2, (uint64_t)shape[d]);
    uint64_t s1 = t[0] ^ m1;
    uint64_t s2 = t[1] ^ m2;
    t[0] = tc_cu_fmix64(s1 + tc_cu_rotl64(s2, 29));
    t[1] = tc_cu_fmix64(s2 ^ t[0]);
}

/* docs/hash.md, section 6: element i of the sample is element
 * floor(i * numel / count) in row-major order; the product needs 128 bits. */
TC_HD uint64_t tc_cu_sample_element(uint64_t i, uint64_t numel, uint64_t count)
{
    return (uint64_t)(((unsigned __int128)i * numel) / count);
}

/* Offset in elements of row-major element e of a view of `ndim` dims. */
TC_HD int64_t tc_cu_element_offset(uint64_t e, int ndim, const int64_t *shape,
                                   const int64_t *strides)
{
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; d--) {
        uint64_t dim = (uint64_t)shape[d];
        off += (int64_t)(e % dim) * strides[d];
        e /= dim;
    }
    return off;
}

/* ---- kernel arguments (passed by value; one definition for both sides) ---- */

/* tc_hash_blocks: hashes blocks [blk0, blk0 + blk_count) of items
 * [item0, item0 + nitems); block b of item item0 + k starts at
 * src + k * src_item_stride + (b - src_blk0) * 16 KiB. */
typedef struct {
    uint64_t src;             /* device address */
    int64_t src_item_stride;  /* bytes */
    uint64_t stream_len;      /* bytes in each item's stream */
    uint64_t blk0, blk_count, src_blk0;
    uint64_t item0, nitems;
    uint64_t acc;             /* device address of the 2 x batch sums */
} tc_cu_blocks_args;

/* tc_gather: copies bytes [p0, p1) of the streams of items [item0, item0 +
 * nitems) to dst + k * dst_item_stride.  Stream element t of an item is its
 * row-major element t, or sample element t when count is not 0. */
typedef struct {
    uint64_t src;             /* device address of item 0 */
    int64_t item_stride;      /* elements */
    uint64_t itemsize;
    uint64_t numel, count;
    uint64_t item0, nitems;
    uint64_t p0, p1;
    uint64_t dst;
    uint64_t dst_item_stride; /* bytes */
    int32_t ndim;
    int32_t pad;
    int64_t shape[TC_CU_MAX_DIMS];
    int64_t strides[TC_CU_MAX_DIMS];
} tc_cu_gather_args;

/* tc_finish: digests of items [0, batch) in place of their sums. */
typedef struct {
    uint64_t acc;
    uint64_t batch;
    uint64_t sample_count, dtype_word, nbytes, nblocks;
    int32_t ndim;
    int32_t pad;
    int64_t shape[TC_CU_MAX_DIMS];
} tc_cu_finish_args;

/* ---- what one thread of each kernel does (hash_cuda.cu adds the geometry) ---- */

/* Where warp `warp` of tc_hash_blocks works: block *b of item *item, n bytes at
 * *p.  Returns 0 for the warps of the last CTA that have no block. */
TC_HD int tc_cu_warp_block(const tc_cu_blocks_args *a, uint64_t warp, const uint8_t **p,
                           uint64_t *n, uint64_t *item, uint64_t *b)
{
    if (warp >= a->nitems * a->blk_count)
        return 0;
    uint64_t k = warp / a->blk_count;
    *b = a->blk0 + warp % a->blk_count;
    *item = a->item0 + k;
    uint64_t left = a->stream_len - *b * TC_HASH_BLOCK_BYTES;
    *n = left < TC_HASH_BLOCK_BYTES ? left : TC_HASH_BLOCK_BYTES;
    *p = (const uint8_t *)(uintptr_t)a->src + (int64_t)k * a->src_item_stride +
         (*b - a->src_blk0) * TC_HASH_BLOCK_BYTES;
    return 1;
}

/* Number of threads' worth of work in a tc_gather launch: one per element
 * (of each item) that has a byte in [p0, p1). */
TC_HD uint64_t tc_cu_gather_total(const tc_cu_gather_args *a)
{
    uint64_t per_item = (a->p1 + a->itemsize - 1) / a->itemsize - a->p0 / a->itemsize;
    return per_item * a->nitems;
}

/* Work item i of a tc_gather launch: copies the bytes in [p0, p1) of one
 * stream element. */
TC_HD void tc_cu_gather_element(const tc_cu_gather_args *a, uint64_t i)
{
    uint64_t is = a->itemsize;
    uint64_t t0 = a->p0 / is;
    uint64_t per_item = (a->p1 + is - 1) / is - t0;
    uint64_t k = i / per_item;
    uint64_t t = t0 + i % per_item;
    uint64_t e = a->count ? tc_cu_sample_element(t, a->numel, a->count) : t;
    int64_t off = (int64_t)(a->item0 + k) * a->item_stride +
                  tc_cu_element_offset(e, a->ndim, a->shape, a->strides);
    const uint8_t *src = (const uint8_t *)(uintptr_t)a->src + off * (int64_t)is;
    uint8_t *dst = (uint8_t *)(uintptr_t)a->dst + k * a->dst_item_stride;
    uint64_t first = t * is;
#ifdef __CUDA_ARCH__
    if (first >= a->p0 && first + is <= a->p1 && (is & (is - 1)) == 0 && is <= 16 &&
        (((uintptr_t)src | (uintptr_t)(dst + first - a->p0)) & (is - 1)) == 0) {
        /* The common case: one whole, naturally aligned element, one load. */
        uint8_t *d = dst + first - a->p0;
        switch (is) {
        case 1: *d = __ldg(src); break;
        case 2: *(unsigned short *)d = __ldg((const unsigned short *)src); break;
        case 4: *(unsigned int *)d = __ldg((const unsigned int *)src); break;
        case 8: *(unsigned long long *)d = __ldg((const unsigned long long *)src); break;
        default: *(uint4 *)d = __ldg((const uint4 *)src); break;
        }
        return;
    }
#endif
    for (uint64_t r = 0; r < is; r++) {
        uint64_t pos = first + r;
        if (pos >= a->p0 && pos < a->p1)
            dst[pos - a->p0] = src[r];
    }
}

/* ---- the plan: which launches hash a batch (host functions) ---- */

typedef struct {
    /* the batch, filled in by the caller */
    uint64_t data;            /* device address of item 0 */
    int64_t item_stride;      /* elements between items */
    uint64_t itemsize, dtype_word, batch;
    int ndim;                 /* per item */
    int64_t shape[TC_CU_MAX_DIMS], strides[TC_CU_MAX_DIMS];
    uint64_t sample_count;    /* as asked; 0 = every byte */
    uint64_t scratch_cap;     /* most scratch bytes to use, a multiple of 16 KiB */
    /* derived by tc_cu_plan_init */
    uint64_t numel, count;    /* count: the effective sample count, 0 = every byte */
    uint64_t stream_len, nblocks;
    int direct;               /* items are hashed where they lie */
    uint64_t scratch_bytes;   /* scratch the steps need (0 when direct) */
    uint64_t pitch;           /* scratch bytes per item when whole items fit */
    uint64_t items_per_step;  /* 0: one item takes several steps */
    int gndim;                /* the item's dims, merged for the gather */
    int64_t gshape[TC_CU_MAX_DIMS], gstrides[TC_CU_MAX_DIMS];
    /* iteration */
    uint64_t next_item, next_blk;
} tc_cu_plan;

/* One step: an optional gather into scratch, then one hash launch. */
typedef struct {
    int gather;
    tc_cu_gather_args g;
    tc_cu_blocks_args h;
} tc_cu_step;

static inline void tc_cu_plan_init(tc_cu_plan *pl)
{
    pl->numel = 1;
    int compact = 1;
    int64_t expect = 1;
    for (int d = pl->ndim - 1; d >= 0; d--) {
        pl->numel *= (uint64_t)pl->shape[d];
        if (pl->shape[d] != 1 && pl->strides[d] != expect)
            compact = 0;
        expect *= pl->shape[d];
    }
    pl->count = pl->sample_count >= pl->numel ? 0 : pl->sample_count;
    pl->stream_len = (pl->count ? pl->count : pl->numel) * pl->itemsize;
    pl->nblocks = (pl->stream_len + TC_HASH_BLOCK_BYTES - 1) / TC_HASH_BLOCK_BYTES;
    pl->direct = pl->count == 0 && compact;
    /* Merging dims that are contiguous with each other (and dropping dims of
     * size 1) keeps row-major order and shortens the gather's index math. */
    pl->gndim = 0;
    for (int d = 0; d < pl->ndim; d++) {
        if (pl->shape[d] == 1)
            continue;
        int g = pl->gndim;
        if (g > 0 && pl->gstrides[g - 1] == pl->strides[d] * pl->shape[d]) {
            pl->gshape[g - 1] *= pl->shape[d];
            pl->gstrides[g - 1] = pl->strides[d];
        } else {
            pl->gshape[g] = pl->shape[d];
            pl->gstrides[g] = pl->strides[d];
            pl->gndim++;
        }
    }
    pl->pitch = (pl->stream_len + TC_CU_SCRATCH_PITCH - 1) / TC_CU_SCRATCH_PITCH *
                TC_CU_SCRATCH_PITCH;
    pl->items_per_step = 0;
    pl->scratch_bytes = 0;
    if (!pl->direct && pl->stream_len) {
        if (pl->pitch <= pl->scratch_cap) {
            pl->items_per_step = pl->scratch_cap / pl->pitch;
            if (pl->items_per_step > pl->batch)
                pl->items_per_step = pl->batch;
            pl->scratch_bytes = pl->items_per_step * pl->pitch;
        } else {
            pl->scratch_bytes = pl->scratch_cap;
        }
    }
    pl->next_item = 0;
    pl->next_blk = 0;
}

/* Fills *st with the next step; returns 0 when there is none.  `scratch` and
 * `acc` are device addresses. */
static inline int tc_cu_plan_next(tc_cu_plan *pl, uint64_t scratch, uint64_t acc, tc_cu_step *st)
{
    if (pl->stream_len == 0 || pl->next_item >= pl->batch)
        return 0;
    tc_cu_blocks_args *h = &st->h;
    h->stream_len = pl->stream_len;
    h->acc = acc;
    if (pl->direct) {
        st->gather = 0;
        h->src = pl->data;
        h->src_item_stride = pl->item_stride * (int64_t)pl->itemsize;
        h->blk0 = 0;
        h->blk_count = pl->nblocks;
        h->src_blk0 = 0;
        h->item0 = 0;
        h->nitems = pl->batch;
        pl->next_item = pl->batch;
        return 1;
    }
    uint64_t item0 = pl->next_item, nitems, blk0, blk1;
    if (pl->items_per_step) {
        nitems = pl->batch - item0 < pl->items_per_step ? pl->batch - item0 : pl->items_per_step;
        blk0 = 0;
        blk1 = pl->nblocks;
        pl->next_item += nitems;
    } else {
        uint64_t per = pl->scratch_cap / TC_HASH_BLOCK_BYTES;
        nitems = 1;
        blk0 = pl->next_blk;
        blk1 = pl->nblocks - blk0 < per ? pl->nblocks : blk0 + per;
        pl->next_blk = blk1;
        if (blk1 == pl->nblocks) {
            pl->next_blk = 0;
            pl->next_item++;
        }
    }
    st->gather = 1;
    tc_cu_gather_args *g = &st->g;
    g->src = pl->data;
    g->item_stride = pl->item_stride;
    g->itemsize = pl->itemsize;
    g->numel = pl->numel;
    g->count = pl->count;
    g->item0 = item0;
    g->nitems = nitems;
    g->p0 = blk0 * TC_HASH_BLOCK_BYTES;
    g->p1 = blk1 * TC_HASH_BLOCK_BYTES < pl->stream_len ? blk1 * TC_HASH_BLOCK_BYTES
                                                        : pl->stream_len;
    g->dst = scratch;
    g->dst_item_stride = pl->pitch;
    g->ndim = pl->gndim;
    g->pad = 0;
    for (int d = 0; d < TC_CU_MAX_DIMS; d++) {
        g->shape[d] = d < pl->gndim ? pl->gshape[d] : 1;
        g->strides[d] = d < pl->gndim ? pl->gstrides[d] : 0;
    }
    h->src = scratch;
    h->src_item_stride = (int64_t)pl->pitch;
    h->blk0 = blk0;
    h->blk_count = blk1 - blk0;
    h->src_blk0 = blk0;
    h->item0 = item0;
    h->nitems = nitems;
    return 1;
}

static inline void tc_cu_plan_finish_args(const tc_cu_plan *pl, uint64_t acc,
                                          tc_cu_finish_args *f)
{
    f->acc = acc;
    f->batch = pl->batch;
    f->sample_count = pl->count;
    f->dtype_word = pl->dtype_word;
    f->nbytes = pl->numel * pl->itemsize;
    f->nblocks = pl->nblocks;
    f->ndim = pl->ndim;
    f->pad = 0;
    for (int d = 0; d < TC_CU_MAX_DIMS; d++)
        f->shape[d] = d < pl->ndim ? pl->shape[d] : 0;
}

#endif
