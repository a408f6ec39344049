/* hash.c -- the item driver of tch128-v2 (docs/hash.md), the same for every SIMD
 * level: cuts an item's byte stream into blocks, walks strided items and
 * samples, and finishes items with their metadata.  The arithmetic is done by
 * the kernels in use (hash_dispatch.c); this file never names an instruction
 * set.  It never allocates and never touches Python. */
#include "hash_internal.h"

#include <string.h>

void *(*const volatile tc_memcpy_fn)(void *, const void *, size_t) = memcpy;
void *(*const volatile tc_memset_fn)(void *, int, size_t) = memset;

void tc_block_digest(const tc_hash_kernels *k, const uint8_t *p, size_t n, uint64_t h[2])
{
    uint8_t pad[TC_HASH_STRIPE_BYTES];
    if (n <= TC_HASH_STRIPE_BYTES) {
        /* One stripe: the lanes past the data read zeros and are constants.  A
         * kernel reads whole steps of eight lanes (64 bytes), so only those are
         * padded. */
        if (n % 64 == 0) {
            /* Whole steps already (64, 128, 192 or 256 bytes): no copy. */
            k->block1(p, n / 8, h);
            return;
        }
        tc_pad_stripe(pad, p, n);
        k->block1(pad, (n + 7) / 8, h);
        return;
    }
    size_t full = n / TC_HASH_STRIPE_BYTES;
    size_t rest = n - full * TC_HASH_STRIPE_BYTES;
    if (rest) /* The last stripe is zero-padded (docs/hash.md, section 3). */
        tc_pad_stripe(pad, p + full * TC_HASH_STRIPE_BYTES, rest);
    if (k->short_block && n <= TC_SHORT_BLOCK_STRIPES * TC_HASH_STRIPE_BYTES) {
        /* A short block in one call, its accumulators never leaving registers. */
        k->short_block(p, full, rest ? pad : NULL, h);
        return;
    }
    uint64_t a[TC_HASH_LANES], c[TC_HASH_LANES];
    memcpy(a, tc_keys + TC_K_IV1, sizeof(a));
    memcpy(c, tc_keys + TC_K_IV2, sizeof(c));
    k->stripes(p, full, 0, a, c);
    if (rest)
        k->stripes(pad, 1, full, a, c);
    k->finish(a, c, h);
}

void tc_hash_block(const uint8_t *p, size_t n, uint64_t h[2])
{
    /* tch128-v1's block digest (the store's payload checksum, docs/format.md):
     * the stripe loop is v2's, only the finish differs.  No one-stripe shortcut:
     * a short block is one zero-padded stripe. */
    const tc_hash_kernels *k = tc_hash_kernels_active();
    uint8_t pad[TC_HASH_STRIPE_BYTES];
    uint64_t a[TC_HASH_LANES], c[TC_HASH_LANES];
    memcpy(a, tc_keys + TC_K_IV1, sizeof(a));
    memcpy(c, tc_keys + TC_K_IV2, sizeof(c));
    size_t full = n / TC_HASH_STRIPE_BYTES;
    k->stripes(p, full, 0, a, c);
    size_t rest = n - full * TC_HASH_STRIPE_BYTES;
    if (rest) {
        tc_pad_stripe(pad, p + full * TC_HASH_STRIPE_BYTES, rest);
        k->stripes(pad, 1, full, a, c);
    }
    k->finish_v1(a, c, h);
}

void tc_block_terms(const uint8_t *p, size_t n, uint64_t b, uint64_t t[2])
{
    uint64_t h[2];
    tc_block_digest(tc_hash_kernels_active(), p, n, h);
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

size_t tc_item_meta(const tc_item *item, uint64_t sample_count, uint64_t nblocks,
                    uint64_t *meta)
{
    uint64_t numel = 1;
    for (int d = 0; d < item->ndim; d++)
        numel *= (uint64_t)item->shape[d];
    size_t m = 0;
    meta[m++] = sample_count;
    meta[m++] = item->dtype_word;
    meta[m++] = numel * item->itemsize;
    meta[m++] = nblocks;
    meta[m++] = (uint64_t)item->ndim;
    for (int d = 0; d < item->ndim; d++)
        meta[m++] = (uint64_t)item->shape[d];
    return m;
}

tc_digest tc_finish_item(uint64_t t1, uint64_t t2, uint64_t nblocks, uint64_t sample_count,
                         const tc_item *item)
{
    uint64_t meta[TC_HASH_META_MAX], md[2];
    tc_meta_digest(meta, tc_item_meta(item, sample_count, nblocks, meta), md);
    uint64_t t[2] = {t1, t2};
    tc_items_final_portable(1, t, NULL, md, t);
    tc_digest out = {t[0], t[1]};
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

uint64_t tc_effective_sample_count(uint64_t sample_count, uint64_t numel)
{
    /* docs/hash.md, section 6: N >= numel is the full-content digest. */
    return sample_count >= numel ? 0 : sample_count;
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
    sample_count = tc_effective_sample_count(sample_count, numel);
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
