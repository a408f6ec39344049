/* hash_avx512.c -- the tch128-v2 stripe loop, block finish, items1 and itemsN
 * with AVX-512F/DQ (and tch128-v1's block finish, for the store's payload
 * checksum): the 32 lanes are four zmm registers per accumulator, and items of
 * at most 4 KiB are hashed and finished eight at a time (docs/hash.md, section
 * 9.3).  The one-stripe block, the short block and the item finish of the
 * stream path and of larger items are the AVX2 kernels (an AVX-512 CPU has AVX2).
 * Compiled with -mavx512f -mavx512dq only (setup.py, SIMD_SOURCES); called only
 * when the CPU reports both (hash_dispatch.c).  Must give exactly the results
 * of hash_portable.c. */
#include "hash_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

/* Every line of the stripe 32 stripes (8 KiB) ahead is prefetched into L2
 * (prefetcht1), not L1.  Measured on an Emerald Rapids VM (2026-11-29, a
 * standalone copy of this loop over 154 MB, docs/hash.md section 9.2): 4 stripes
 * ahead into L1 with every other line 9.5 GB/s, every line 11.1, 16 stripes ahead
 * into L1 12.3-12.6, 32 ahead into L2 13.4-14.2, against 15.5-16.3 GB/s for a
 * plain read of the same buffer (0.61x -> 0.87x); non-temporal hints 7-9 GB/s.
 * Prefetches into L1 hold the core's few line-fill buffers for the whole trip
 * from DRAM and stall the loads behind them; into L2 they do not. */
#define TC_PREFETCH512_STRIPES 32

static void stripes_avx512(const uint8_t *p, size_t nstripes, size_t s0,
                           uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES])
{
    __m512i acc_a[4], acc_c[4], lane1[4], lane2[4];
    for (int v = 0; v < 4; v++) {
        acc_a[v] = _mm512_loadu_si512((const void *)(a + 8 * v));
        acc_c[v] = _mm512_loadu_si512((const void *)(c + 8 * v));
        lane1[v] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_LANE1 + 8 * v));
        lane2[v] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_LANE2 + 8 * v));
    }
    for (size_t s = 0; s < nstripes; s++) {
        const char *ahead = (const char *)(p + (s + TC_PREFETCH512_STRIPES) * TC_HASH_STRIPE_BYTES);
        _mm_prefetch(ahead, _MM_HINT_T1);
        _mm_prefetch(ahead + 64, _MM_HINT_T1);
        _mm_prefetch(ahead + 128, _MM_HINT_T1);
        _mm_prefetch(ahead + 192, _MM_HINT_T1);
        __m512i ks1 = _mm512_set1_epi64((long long)tc_keys[TC_K_STRIPE1 + s0 + s]);
        __m512i ks2 = _mm512_set1_epi64((long long)tc_keys[TC_K_STRIPE2 + s0 + s]);
        const uint8_t *stripe = p + s * TC_HASH_STRIPE_BYTES;
        for (int v = 0; v < 4; v++) {
            __m512i w = _mm512_loadu_si512((const void *)(stripe + 64 * v));
            /* 0x96 is the truth table of a ^ b ^ c. */
            __m512i k1 = _mm512_ternarylogic_epi64(w, lane1[v], ks1, 0x96);
            __m512i k2 = _mm512_ternarylogic_epi64(w, lane2[v], ks2, 0x96);
            __m512i m1 = _mm512_mul_epu32(k1, _mm512_srli_epi64(k1, 32));
            __m512i m2 = _mm512_mul_epu32(k2, _mm512_srli_epi64(k2, 32));
            acc_a[v] = _mm512_add_epi64(acc_a[v], _mm512_add_epi64(w, m1));
            acc_c[v] = _mm512_add_epi64(acc_c[v], m2);
        }
    }
    for (int v = 0; v < 4; v++) {
        _mm512_storeu_si512((void *)(a + 8 * v), acc_a[v]);
        _mm512_storeu_si512((void *)(c + 8 * v), acc_c[v]);
    }
}

/* The sum of the eight 64-bit lanes modulo 2^64.  Not _mm512_reduce_add_epi64:
 * gcc's header adds the lanes as signed long long, which is undefined on
 * overflow (UBSan reports it wherever -fwrapv is not given, as in the store and
 * fuzz harnesses); the vector adds below and the final add are unsigned. */
static inline uint64_t sum_lanes(__m512i v)
{
    __m256i s4 = _mm256_add_epi64(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
    return (uint64_t)_mm_cvtsi128_si64(s2) + (uint64_t)_mm_extract_epi64(s2, 1);
}

static inline __m512i fmix64x8(__m512i z)
{
    const __m512i m1 = _mm512_set1_epi64((long long)0xff51afd7ed558ccdULL);
    const __m512i m2 = _mm512_set1_epi64((long long)0xc4ceb9fe1a85ec53ULL);
    z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 33));
    z = _mm512_mullo_epi64(z, m1);
    z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 33));
    z = _mm512_mullo_epi64(z, m2);
    return _mm512_xor_si512(z, _mm512_srli_epi64(z, 33));
}

static void finish_avx512(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                          uint64_t h[2])
{
    __m512i h1 = _mm512_setzero_si512(), h2 = _mm512_setzero_si512();
    for (int v = 0; v < 4; v++) {
        __m512i av = _mm512_loadu_si512((const void *)(a + 8 * v));
        __m512i cv = _mm512_loadu_si512((const void *)(c + 8 * v));
        __m512i f1 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN1 + 8 * v));
        __m512i f2 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN2 + 8 * v));
        h1 = _mm512_add_epi64(h1, fmix64x8(_mm512_xor_si512(av, f1)));
        h2 = _mm512_add_epi64(h2, _mm512_xor_si512(cv, f2));
    }
    h[0] = sum_lanes(h1);
    h[1] = sum_lanes(h2);
}

static void finish_v1_avx512(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                             uint64_t h[2])
{
    __m512i h1 = _mm512_setzero_si512(), h2 = _mm512_setzero_si512();
    for (int v = 0; v < 4; v++) {
        __m512i av = _mm512_loadu_si512((const void *)(a + 8 * v));
        __m512i cv = _mm512_loadu_si512((const void *)(c + 8 * v));
        __m512i f1 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN1 + 8 * v));
        __m512i f2 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN2 + 8 * v));
        h1 = _mm512_add_epi64(h1, fmix64x8(_mm512_add_epi64(av, fmix64x8(_mm512_xor_si512(cv, f1)))));
        h2 = _mm512_add_epi64(h2, fmix64x8(_mm512_add_epi64(cv, fmix64x8(_mm512_xor_si512(av, f2)))));
    }
    h[0] = sum_lanes(h1);
    h[1] = sum_lanes(h2);
}

/* Items of one stripe (items1) and of 2 to 16 stripes (itemsN), eight at a time.
 * The plan of the AVX2 kernels (docs/hash.md, sections 9 and 9.1), with a zmm
 * register of eight lanes where AVX2 has a ymm register of four: an item's lanes
 * (at most 32: four registers) sum their share of h1 and h2 into one register of
 * eight partial sums each; eight items' registers are reduced together by one
 * transpose into one register that holds the eight items' h1 (and one for h2);
 * the block-0 term and the item finish of those eight are then one fmix64x8 per
 * step.  AVX-512DQ's vpmullq is the 64-bit multiply that AVX2 builds from three
 * 32-bit ones, and with 32 zmm registers an item of several stripes keeps all 32
 * lanes' accumulators in registers in one pass (AVX2 needs two passes of 16).
 * Items are read in place: only the registers of eight lanes that hold data; the
 * last one, if the item ends inside it, by a masked load of its whole words
 * (vmovdqu64 with a mask neither reads nor faults past it) and one 8-byte load
 * that ends at the item's last byte for its partial word, merged in by a masked
 * broadcast; nothing outside an item is read. */

/* [sum of x[0]'s lanes, sum of x[1]'s, ..., sum of x[7]'s]: three rounds of
 * pairwise adds, each halving the registers.  After the first, 128-bit lane L of
 * p[k] holds x[2k]'s and x[2k+1]'s lanes 2L + 2L+1; after the second, q[k]'s
 * 128-bit lanes hold the sums of lanes 0-3 of x[4k] and x[4k+1], of their lanes
 * 4-7, then the same of x[4k+2] and x[4k+3]. */
static inline __m512i hsum8x8(const __m512i x[8])
{
    enum { even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1) };
    __m512i p[4], q[2];
    for (int k = 0; k < 4; k++)
        p[k] = _mm512_add_epi64(_mm512_unpacklo_epi64(x[2 * k], x[2 * k + 1]),
                                _mm512_unpackhi_epi64(x[2 * k], x[2 * k + 1]));
    for (int k = 0; k < 2; k++)
        q[k] = _mm512_add_epi64(_mm512_shuffle_i64x2(p[2 * k], p[2 * k + 1], even),
                                _mm512_shuffle_i64x2(p[2 * k], p[2 * k + 1], odd));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(q[0], q[1], even),
                            _mm512_shuffle_i64x2(q[0], q[1], odd));
}

/* Items per pass of items_run8: the lane work of G groups of eight items first,
 * then their G item finishes side by side (each is a chain of three dependent
 * fmix64x8, about 110 cycles, too long to hide behind one group's lanes). */
#define TC_ITEMS8_GROUPS 4

/* The block-0 term and the item finish (docs/hash.md, sections 4 and 5) of g
 * groups of eight items whose block digests are t1[k], t2[k]; item i of group k
 * to out[16k + 2i], out[16k + 2i + 1]. */
static inline __attribute__((always_inline)) void items8_finish(const __m512i *t1,
                                                                const __m512i *t2, int g,
                                                                const uint64_t md[2],
                                                                uint64_t *out)
{
    const __m512i kb1 = _mm512_set1_epi64((long long)tc_block0_key[0]);
    const __m512i kb2 = _mm512_set1_epi64((long long)tc_block0_key[1]);
    const __m512i md1 = _mm512_set1_epi64((long long)md[0]);
    const __m512i md2 = _mm512_set1_epi64((long long)md[1]);
    /* Interleave of e1 (indices 0-7) and e2 (8-15): items 0-3, then 4-7. */
    const __m512i lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    __m512i s1[TC_ITEMS8_GROUPS], s2[TC_ITEMS8_GROUPS], e1[TC_ITEMS8_GROUPS];
    for (int k = 0; k < g; k++) {
        s1[k] = _mm512_xor_si512(fmix64x8(_mm512_xor_si512(t1[k], kb1)), md1);
        s2[k] = _mm512_xor_si512(fmix64x8(_mm512_xor_si512(t2[k], kb2)), md2);
    }
    for (int k = 0; k < g; k++)
        e1[k] = fmix64x8(_mm512_add_epi64(s1[k], _mm512_rol_epi64(s2[k], 29)));
    for (int k = 0; k < g; k++) {
        __m512i e2 = fmix64x8(_mm512_xor_si512(s2[k], e1[k]));
        _mm512_storeu_si512((void *)(out + 16 * k), _mm512_permutex2var_epi64(e1[k], lo, e2));
        _mm512_storeu_si512((void *)(out + 16 * k + 8), _mm512_permutex2var_epi64(e1[k], hi, e2));
    }
}

/* The last, partial word of an item of `bytes` bytes at p (its bytes as the low
 * bytes of a zero-padded word); zero when it has none (shift 0).  Read with one
 * load that ends at the item's last byte, or byte by byte below 8 bytes. */
static inline __attribute__((always_inline)) uint64_t partial_word8(const uint8_t *p,
                                                                    size_t bytes, int shift)
{
    if (!shift)
        return 0;
    uint64_t t = 0;
    if (bytes >= 8) {
        memcpy(&t, p + bytes - 8, 8);
        t >>= shift;
    } else {
        for (size_t b = bytes; b-- > 0;)
            t = t << 8 | p[b];
    }
    return t;
}

/* The shape of the end of an item whose last stripe holds `words` whole words
 * and then pb (< 8) bytes: which lanes of register r (eight lanes) are whole
 * words (*mask) and which one is the partial word (*pmask). */
static void last_reg_masks8(size_t words, size_t pb, int r, __mmask8 *mask, __mmask8 *pmask)
{
    unsigned m = 0, pm = 0;
    for (unsigned j = 0; j < 8; j++) {
        size_t lane = 8 * (size_t)r + j;
        if (lane < words)
            m |= 1u << j;
        if (pb && lane == words)
            pm |= 1u << j;
    }
    *mask = (__mmask8)m;
    *pmask = (__mmask8)pm;
}

/* Register r of an item's last stripe at q (its first byte), zero-padded: its
 * whole words by a masked load, its partial word `part` by a masked broadcast. */
static inline __m512i masked_reg(const uint8_t *q, int r, __mmask8 mask, __mmask8 pmask,
                                 uint64_t part)
{
    __m512i w = _mm512_maskz_loadu_epi64(mask, (const void *)(q + 64 * r));
    return _mm512_mask_set1_epi64(w, pmask, (long long)part);
}

/* Lane keys of stripe 0 by register (k = KL ^ KS[0]), the IV and finish keys, and
 * the shape of the last register of an item of one stripe. */
typedef struct {
    __m512i k1[4], k2[4], iv1[4], iv2[4], f1[4], f2[4];
    size_t bytes;     /* the item's bytes */
    int part_shift;   /* 64 - 8 * (bytes of the partial word); 0: none */
    __mmask8 mask, pmask;
} items1_keys8;

/* One item of one stripe: partial sums (eight to a register) of the shares of h1,
 * h2 of its 8 * nv data lanes.  With `masked`, register nv - 1 is the end of the
 * item (masked_reg); the lanes after it come from tc_lane_tail (the driver). */
static inline __attribute__((always_inline)) void item1_lanes8(const uint8_t *p,
                                                               const items1_keys8 *K, int nv,
                                                               int masked, __m512i *h1,
                                                               __m512i *h2)
{
    __m512i s1 = _mm512_setzero_si512(), s2 = _mm512_setzero_si512();
    for (int v = 0; v < nv; v++) {
        __m512i w;
        if (masked && v == nv - 1)
            w = masked_reg(p, v, K->mask, K->pmask, partial_word8(p, K->bytes, K->part_shift));
        else
            w = _mm512_loadu_si512((const void *)(p + 64 * v));
        __m512i k1 = _mm512_xor_si512(w, K->k1[v]);
        __m512i k2 = _mm512_xor_si512(w, K->k2[v]);
        __m512i a = _mm512_add_epi64(_mm512_add_epi64(w, K->iv1[v]),
                                     _mm512_mul_epu32(k1, _mm512_srli_epi64(k1, 32)));
        __m512i c = _mm512_add_epi64(K->iv2[v], _mm512_mul_epu32(k2, _mm512_srli_epi64(k2, 32)));
        s1 = _mm512_add_epi64(s1, fmix64x8(_mm512_xor_si512(a, K->f1[v])));
        s2 = _mm512_add_epi64(s2, _mm512_xor_si512(c, K->f2[v]));
    }
    *h1 = s1;
    *h2 = s2;
}

/* What is the same for every item of an itemsN call: the keyed lane constants
 * of every stripe (KL ^ KS[s], by register of eight lanes), and the shape of the
 * last stripe. */
typedef struct {
    __m512i k1[TC_SHORT_BLOCK_STRIPES][4], k2[TC_SHORT_BLOCK_STRIPES][4];
    __m512i iv1[4], iv2[4]; /* IV1, IV2, plus the products of padding-only registers */
    __m512i f1[4], f2[4];
    size_t full;            /* whole stripes */
    size_t bytes;           /* the item's bytes */
    int whole_regs;         /* last stripe: registers of eight whole words */
    int data_regs;          /* last stripe: registers that hold any data */
    int part_shift;         /* 64 - 8 * (bytes of the partial word); 0: none */
    __mmask8 mask[4], pmask[4];
} itemsN_ctx8;

/* Word register w of stripe s into the accumulators of its eight lanes. */
static inline __attribute__((always_inline)) void absorb8(__m512i w, __m512i k1, __m512i k2,
                                                          __m512i *acc_a, __m512i *acc_c)
{
    __m512i x1 = _mm512_xor_si512(w, k1);
    __m512i x2 = _mm512_xor_si512(w, k2);
    __m512i m1 = _mm512_mul_epu32(x1, _mm512_srli_epi64(x1, 32));
    __m512i m2 = _mm512_mul_epu32(x2, _mm512_srli_epi64(x2, 32));
    *acc_a = _mm512_add_epi64(*acc_a, _mm512_add_epi64(m1, w));
    *acc_c = _mm512_add_epi64(*acc_c, m2);
}

/* One item of 2 to 16 stripes: all 32 lanes' accumulators in eight registers
 * through its stripes, then partial sums (eight to a register) of their shares of
 * h1, h2 (docs/hash.md, section 4). */
static inline __attribute__((always_inline)) void itemN_lanes8(const uint8_t *p,
                                                               const itemsN_ctx8 *C,
                                                               __m512i *h1, __m512i *h2)
{
    __m512i acc_a[4], acc_c[4];
    for (int v = 0; v < 4; v++) {
        acc_a[v] = C->iv1[v];
        acc_c[v] = C->iv2[v];
    }
    for (size_t s = 0; s < C->full; s++) {
        const uint8_t *q = p + s * TC_HASH_STRIPE_BYTES;
        for (int v = 0; v < 4; v++)
            absorb8(_mm512_loadu_si512((const void *)(q + 64 * v)), C->k1[s][v], C->k2[s][v],
                    &acc_a[v], &acc_c[v]);
    }
    /* The last stripe's registers that hold data; those that read only zero
     * padding are constants, already in acc (iv1, iv2). */
    if (C->data_regs) {
        const uint8_t *last = p + C->full * TC_HASH_STRIPE_BYTES;
        uint64_t part = partial_word8(p, C->bytes, C->part_shift);
        for (int v = 0; v < 4; v++) {
            if (v >= C->data_regs)
                break;
            __m512i x = v < C->whole_regs
                            ? _mm512_loadu_si512((const void *)(last + 64 * v))
                            : masked_reg(last, v, C->mask[v], C->pmask[v], part);
            absorb8(x, C->k1[C->full][v], C->k2[C->full][v], &acc_a[v], &acc_c[v]);
        }
    }
    __m512i s1 = _mm512_setzero_si512(), s2 = _mm512_setzero_si512();
    for (int v = 0; v < 4; v++) {
        s1 = _mm512_add_epi64(s1, fmix64x8(_mm512_xor_si512(acc_a[v], C->f1[v])));
        s2 = _mm512_add_epi64(s2, _mm512_xor_si512(acc_c[v], C->f2[v]));
    }
    *h1 = s1;
    *h2 = s2;
}

/* One item's lane sums for the driver below: itemN_lanes8 when C is given, else
 * item1_lanes8. */
static inline __attribute__((always_inline)) void item_lanes8(const uint8_t *p,
                                                              const items1_keys8 *K, int nv,
                                                              int masked, const itemsN_ctx8 *C,
                                                              __m512i *h1, __m512i *h2)
{
    if (C)
        itemN_lanes8(p, C, h1, h2);
    else
        item1_lanes8(p, K, nv, masked, h1, h2);
}

/* The driver of items1 and itemsN: items in groups of eight, TC_ITEMS8_GROUPS
 * groups per pass (their lane work first, then their finishes side by side), and
 * the last n % 8 items as one group whose missing items are zeros, only the real
 * ones written.  Inlined with constant arguments: C is NULL for items1 (keys K,
 * nv data registers, masked last register), else the itemsN context. */
static inline __attribute__((always_inline)) void items_run8(const uint8_t *base,
                                                             ptrdiff_t stride, size_t n,
                                                             const items1_keys8 *K, int nv,
                                                             int masked, const itemsN_ctx8 *C,
                                                             const uint64_t md[2], uint64_t *out)
{
    /* items1's padding-only lanes; itemsN has its own in C->iv1, C->iv2. */
    const __m512i tail1 =
        C ? _mm512_setzero_si512() : _mm512_set1_epi64((long long)tc_lane_tail[8 * nv][0]);
    const __m512i tail2 =
        C ? _mm512_setzero_si512() : _mm512_set1_epi64((long long)tc_lane_tail[8 * nv][1]);
    size_t i = 0;
    while (i + 8 <= n) {
        size_t g = (n - i) / 8 < TC_ITEMS8_GROUPS ? (n - i) / 8 : TC_ITEMS8_GROUPS;
        __m512i t1[TC_ITEMS8_GROUPS], t2[TC_ITEMS8_GROUPS];
        for (size_t k = 0; k < g; k++) {
            __m512i x1[8], x2[8];
            const uint8_t *p = base + (ptrdiff_t)(i + 8 * k) * stride;
            for (int j = 0; j < 8; j++)
                item_lanes8(p + j * stride, K, nv, masked, C, &x1[j], &x2[j]);
            t1[k] = _mm512_add_epi64(hsum8x8(x1), tail1);
            t2[k] = _mm512_add_epi64(hsum8x8(x2), tail2);
        }
        if (g == TC_ITEMS8_GROUPS)
            items8_finish(t1, t2, TC_ITEMS8_GROUPS, md, out + 2 * i);
        else
            for (size_t k = 0; k < g; k++)
                items8_finish(t1 + k, t2 + k, 1, md, out + 2 * i + 16 * k);
        i += 8 * g;
    }
    if (i < n) {
        __m512i x1[8], x2[8];
        for (size_t k = 0; k < 8; k++) {
            if (i + k < n) {
                item_lanes8(base + (ptrdiff_t)(i + k) * stride, K, nv, masked, C, &x1[k], &x2[k]);
            } else {
                x1[k] = _mm512_setzero_si512();
                x2[k] = _mm512_setzero_si512();
            }
        }
        __m512i t1 = _mm512_add_epi64(hsum8x8(x1), tail1);
        __m512i t2 = _mm512_add_epi64(hsum8x8(x2), tail2);
        uint64_t digests[16];
        items8_finish(&t1, &t2, 1, md, digests);
        memcpy(out + 2 * i, digests, 2 * sizeof(uint64_t) * (n - i));
    }
}

static void items1_avx512(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                          const uint64_t md[2], uint64_t *out)
{
    /* Registers of eight lanes that hold data; the lanes after them read only
     * padding and come from tc_lane_tail. */
    size_t words = bytes / 8, pb = bytes % 8;
    int nv = (int)((words + (pb != 0) + 7) / 8);
    int masked = bytes % 64 != 0;
    items1_keys8 K;
    K.bytes = bytes;
    K.part_shift = pb ? (int)(64 - 8 * pb) : 0;
    last_reg_masks8(words, pb, nv - 1, &K.mask, &K.pmask);
    const __m512i ks1 = _mm512_set1_epi64((long long)tc_keys[TC_K_STRIPE1]);
    const __m512i ks2 = _mm512_set1_epi64((long long)tc_keys[TC_K_STRIPE2]);
    for (int v = 0; v < 4; v++) {
        __m512i l1 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_LANE1 + 8 * v));
        __m512i l2 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_LANE2 + 8 * v));
        K.k1[v] = _mm512_xor_si512(ks1, l1);
        K.k2[v] = _mm512_xor_si512(ks2, l2);
        K.iv1[v] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_IV1 + 8 * v));
        K.iv2[v] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_IV2 + 8 * v));
        K.f1[v] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN1 + 8 * v));
        K.f2[v] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN2 + 8 * v));
    }
    /* One instance per register count, with and without a partial last register. */
#define TC_ITEMS1_CASE(NV)                                                  \
    case NV:                                                                \
        if (masked)                                                         \
            items_run8(base, stride, n, &K, NV, 1, NULL, md, out);          \
        else                                                                \
            items_run8(base, stride, n, &K, NV, 0, NULL, md, out);          \
        break;
    switch (nv) {
        TC_ITEMS1_CASE(1)
        TC_ITEMS1_CASE(2)
        TC_ITEMS1_CASE(3)
    default:
        if (masked)
            items_run8(base, stride, n, &K, 4, 1, NULL, md, out);
        else
            items_run8(base, stride, n, &K, 4, 0, NULL, md, out);
        break;
    }
#undef TC_ITEMS1_CASE
}

static void itemsN_avx512(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                          const uint64_t md[2], uint64_t *out)
{
    itemsN_ctx8 C;
    C.bytes = bytes;
    C.full = bytes / TC_HASH_STRIPE_BYTES;
    size_t rest = bytes % TC_HASH_STRIPE_BYTES;
    size_t words = rest / 8, pb = rest % 8;
    size_t nst = C.full + (rest != 0);
    C.whole_regs = (int)(words / 8);
    C.data_regs = (int)((words + (pb != 0) + 7) / 8);
    C.part_shift = pb ? (int)(64 - 8 * pb) : 0;
    for (int r = 0; r < 4; r++) {
        last_reg_masks8(words, pb, r, &C.mask[r], &C.pmask[r]);
        C.iv1[r] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_IV1 + 8 * r));
        C.iv2[r] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_IV2 + 8 * r));
        C.f1[r] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN1 + 8 * r));
        C.f2[r] = _mm512_loadu_si512((const void *)(tc_keys + TC_K_FIN2 + 8 * r));
    }
    for (size_t s = 0; s < nst; s++) {
        __m512i ks1 = _mm512_set1_epi64((long long)tc_keys[TC_K_STRIPE1 + s]);
        __m512i ks2 = _mm512_set1_epi64((long long)tc_keys[TC_K_STRIPE2 + s]);
        for (int r = 0; r < 4; r++) {
            __m512i l1 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_LANE1 + 8 * r));
            __m512i l2 = _mm512_loadu_si512((const void *)(tc_keys + TC_K_LANE2 + 8 * r));
            C.k1[s][r] = _mm512_xor_si512(ks1, l1);
            C.k2[s][r] = _mm512_xor_si512(ks2, l2);
        }
    }
    /* A register of the last stripe that reads only zero padding (w = 0) adds
     * the same product to every item's accumulators: it starts there. */
    for (int r = rest ? C.data_regs : 4; r < 4; r++) {
        __m512i x1 = C.k1[C.full][r], x2 = C.k2[C.full][r];
        C.iv1[r] = _mm512_add_epi64(C.iv1[r], _mm512_mul_epu32(x1, _mm512_srli_epi64(x1, 32)));
        C.iv2[r] = _mm512_add_epi64(C.iv2[r], _mm512_mul_epu32(x2, _mm512_srli_epi64(x2, 32)));
    }
    items_run8(base, stride, n, NULL, 4, 0, &C, md, out);
}

const tc_hash_kernels tc_kernels_avx512 = {
    TC_SIMD_AVX512, stripes_avx512, finish_avx512, finish_v1_avx512, tc_block1_avx2,
    tc_short_block_avx2, tc_items_final_avx2, items1_avx512, itemsN_avx512,
};
#endif
