/* hash.c -- the portable reference of tch128-v1 (docs/hash.md) and the item
 * driver shared by every SIMD level: keys, block finish, the streaming state,
 * metadata finish, strided traversal and subsampling.
 *
 * This file is the definition the other engines (hash_avx2.c, hash_avx512.c,
 * hash_cuda.cu) are tested against.  It never allocates and never touches
 * Python. */
#include "hash_internal.h"

#include <pthread.h>
#include <string.h>

#define TC_GAMMA 0x9E3779B97F4A7C15ULL
#define TC_KEY_SEED 0x7463683132387631ULL /* "tch128v1" */

uint64_t tc_keys[TC_K_COUNT];

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* docs/hash.md, section 2: the 64-bit finalizer of MurmurHash3. */
uint64_t tc_fmix64(uint64_t z)
{
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdULL;
    z ^= z >> 33;
    z *= 0xc4ceb9fe1a85ec53ULL;
    z ^= z >> 33;
    return z;
}

/* docs/hash.md, section 2: key(i) is the i-th output of SplitMix64. */
uint64_t tc_hash_key(uint64_t index)
{
    uint64_t z = TC_KEY_SEED + (index + 1) * TC_GAMMA;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void tc_stripes_portable(const uint8_t *p, size_t nstripes, size_t s0,
                         uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES])
{
    for (size_t s = 0; s < nstripes; s++) {
        uint64_t ks1 = tc_keys[TC_K_STRIPE1 + s0 + s];
        uint64_t ks2 = tc_keys[TC_K_STRIPE2 + s0 + s];
        const uint8_t *stripe = p + s * TC_HASH_STRIPE_BYTES;
        for (int j = 0; j < TC_HASH_LANES; j++) {
            uint64_t w = load_le64(stripe + 8 * j);
            uint64_t k1 = w ^ tc_keys[TC_K_LANE1 + j] ^ ks1;
            uint64_t k2 = w ^ tc_keys[TC_K_LANE2 + j] ^ ks2;
            a[j] += w + (k1 & 0xffffffffULL) * (k1 >> 32);
            c[j] += (k2 & 0xffffffffULL) * (k2 >> 32);
        }
    }
}

void tc_finish_portable(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                        uint64_t h[2])
{
    uint64_t h1 = 0, h2 = 0;
    for (int j = 0; j < TC_HASH_LANES; j++) {
        h1 += tc_fmix64(a[j] + tc_fmix64(c[j] ^ tc_keys[TC_K_FIN1 + j]));
        h2 += tc_fmix64(c[j] + tc_fmix64(a[j] ^ tc_keys[TC_K_FIN2 + j]));
    }
    h[0] = h1;
    h[1] = h2;
}

tc_stripes_fn tc_stripes_active = tc_stripes_portable;
tc_finish_fn tc_finish_active = tc_finish_portable;

void tc_hash_block(const uint8_t *p, size_t n, uint64_t h[2])
{
    uint64_t a[TC_HASH_LANES], c[TC_HASH_LANES];
    for (int j = 0; j < TC_HASH_LANES; j++) {
        a[j] = tc_keys[TC_K_IV1 + j];
        c[j] = tc_keys[TC_K_IV2 + j];
    }
    size_t full = n / TC_HASH_STRIPE_BYTES;
    tc_stripes_active(p, full, 0, a, c);
    size_t rest = n - full * TC_HASH_STRIPE_BYTES;
    if (rest) {
        /* The last stripe is zero-padded (docs/hash.md, section 3). */
        uint8_t pad[TC_HASH_STRIPE_BYTES];
        memcpy(pad, p + full * TC_HASH_STRIPE_BYTES, rest);
        memset(pad + rest, 0, sizeof(pad) - rest);
        tc_stripes_active(pad, 1, full, a, c);
    }
    tc_finish_active(a, c, h);
}

void tc_block_terms(const uint8_t *p, size_t n, uint64_t b, uint64_t t[2])
{
    uint64_t h[2];
    tc_hash_block(p, n, h);
    /* Terms are keyed by the block index and summed, so blocks can be hashed in
     * any order, on several threads or on a GPU, and still give one digest
     * (docs/hash.md, section 4). */
    t[0] += tc_fmix64(h[0] ^ tc_fmix64(b + tc_keys[TC_K_BLOCK1]));
    t[1] += tc_fmix64(h[1] ^ tc_fmix64(b + tc_keys[TC_K_BLOCK2]));
}

static void absorb_block(tc_hash_stream *s, const uint8_t *p, size_t n)
{
    uint64_t t[2] = {s->t1, s->t2};
    tc_block_terms(p, n, s->nblocks++, t);
    s->t1 = t[0];
    s->t2 = t[1];
}

void tc_stream_init(tc_hash_stream *s)
{
    s->t1 = s->t2 = 0;
    s->nblocks = 0;
    s->fill = 0;
}

void tc_stream_update(tc_hash_stream *s, const uint8_t *p, size_t n)
{
    if (s->fill) {
        size_t take = TC_HASH_BLOCK_BYTES - s->fill;
        if (take > n)
            take = n;
        memcpy(s->buf + s->fill, p, take);
        s->fill += take;
        p += take;
        n -= take;
        if (s->fill < TC_HASH_BLOCK_BYTES)
            return;
        absorb_block(s, s->buf, TC_HASH_BLOCK_BYTES);
        s->fill = 0;
    }
    while (n >= TC_HASH_BLOCK_BYTES) {
        absorb_block(s, p, TC_HASH_BLOCK_BYTES);
        p += TC_HASH_BLOCK_BYTES;
        n -= TC_HASH_BLOCK_BYTES;
    }
    memcpy(s->buf, p, n);
    s->fill = n;
}

static inline void meta_absorb(uint64_t *s1, uint64_t *s2, uint64_t m)
{
    *s1 = tc_fmix64(*s1 ^ m) + TC_GAMMA;
    *s2 = tc_fmix64(*s2 ^ rotl64(m, 32)) + TC_GAMMA;
}

tc_digest tc_finish_item(uint64_t t1, uint64_t t2, uint64_t nblocks, uint64_t sample_count,
                         const tc_item *item)
{
    uint64_t numel = 1;
    for (int d = 0; d < item->ndim; d++)
        numel *= (uint64_t)item->shape[d];
    uint64_t s1 = t1 ^ tc_keys[TC_K_SEED1];
    uint64_t s2 = t2 ^ tc_keys[TC_K_SEED2];
    meta_absorb(&s1, &s2, sample_count);
    meta_absorb(&s1, &s2, item->dtype_word);
    meta_absorb(&s1, &s2, numel * item->itemsize);
    meta_absorb(&s1, &s2, nblocks);
    meta_absorb(&s1, &s2, (uint64_t)item->ndim);
    for (int d = 0; d < item->ndim; d++)
        meta_absorb(&s1, &s2, (uint64_t)item->shape[d]);
    tc_digest out;
    out.d1 = tc_fmix64(s1 + rotl64(s2, 29));
    out.d2 = tc_fmix64(s2 ^ out.d1);
    return out;
}

tc_digest tc_stream_final(tc_hash_stream *s, uint64_t sample_count, const tc_item *item)
{
    if (s->fill) {
        absorb_block(s, s->buf, s->fill);
        s->fill = 0;
    }
    return tc_finish_item(s->t1, s->t2, s->nblocks, sample_count, item);
}

/* Feeds the item's elements in logical row-major order: the innermost
 * dimensions that are compact are emitted as one run per outer index. */
static void feed_strided(tc_hash_stream *s, const tc_item *item)
{
    int ndim = item->ndim;
    int inner = ndim; /* dims [inner, ndim) form one compact run */
    int64_t run = 1;
    while (inner > 0 && (item->shape[inner - 1] == 1 || item->strides[inner - 1] == run)) {
        run *= item->shape[inner - 1];
        inner--;
    }
    size_t run_bytes = (size_t)run * item->itemsize;
    int64_t idx[64] = {0};
    for (;;) {
        int64_t off = 0;
        for (int d = 0; d < inner; d++)
            off += idx[d] * item->strides[d];
        tc_stream_update(s, item->base + off * (int64_t)item->itemsize, run_bytes);
        int d = inner - 1;
        while (d >= 0 && ++idx[d] == item->shape[d]) {
            idx[d] = 0;
            d--;
        }
        if (d < 0)
            return;
    }
}

/* Byte offset of row-major element e of an item with any strides. */
static int64_t element_offset(const tc_item *item, uint64_t e)
{
    int64_t off = 0;
    for (int d = item->ndim - 1; d >= 0; d--) {
        uint64_t dim = (uint64_t)item->shape[d];
        off += (int64_t)(e % dim) * item->strides[d];
        e /= dim;
    }
    return off * (int64_t)item->itemsize;
}

/* docs/hash.md, section 6: element i of the sample is element
 * floor(i * numel / count) of the item in row-major order.  The index is
 * stepped exactly (quotient plus a carried remainder) instead of divided per
 * element, and sampled elements are packed into s->buf directly. */
static void feed_sample(tc_hash_stream *s, const tc_item *item, uint64_t numel, uint64_t count,
                        int compact)
{
    uint64_t q = numel / count, r = numel % count;
    uint64_t e = 0, frac = 0;
    size_t isz = item->itemsize;
    for (uint64_t i = 0; i < count; i++) {
        int64_t off = compact ? (int64_t)(e * isz) : element_offset(item, e);
        if (s->fill + isz <= TC_HASH_BLOCK_BYTES) {
            memcpy(s->buf + s->fill, item->base + off, isz);
            s->fill += isz;
        } else {
            tc_stream_update(s, item->base + off, isz);
        }
        e += q;
        frac += r;
        if (frac >= count) {
            frac -= count;
            e++;
        }
    }
}

tc_digest tc_hash_item(const tc_item *item, uint64_t sample_count, tc_hash_stream *s)
{
    uint64_t numel = 1;
    int compact = 1;
    int64_t expect = 1;
    for (int d = item->ndim - 1; d >= 0; d--) {
        numel *= (uint64_t)item->shape[d];
        if (item->shape[d] != 1 && item->strides[d] != expect)
            compact = 0;
        expect *= item->shape[d];
    }
    if (sample_count >= numel)
        sample_count = 0;
    tc_stream_init(s);
    if (numel == 0) {
        /* no bytes */
    } else if (sample_count) {
        feed_sample(s, item, numel, sample_count, compact);
    } else if (compact) {
        tc_stream_update(s, item->base, (size_t)numel * item->itemsize);
    } else {
        feed_strided(s, item);
    }
    return tc_stream_final(s, sample_count, item);
}

static pthread_once_t keys_once = PTHREAD_ONCE_INIT;

static void init_keys(void)
{
    for (uint64_t i = 0; i < TC_K_COUNT; i++)
        tc_keys[i] = tc_hash_key(i);
}

void tc_hash_select_best(void); /* hash_dispatch.c */

static void init_all(void)
{
    init_keys();
    tc_hash_select_best();
}

void tc_hash_init(void)
{
    pthread_once(&keys_once, init_all);
}
