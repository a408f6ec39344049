/* hash_avx2.c -- the tch128-v2 kernels with AVX2 (hash_internal.h): in the stripe
 * loop the 32 lanes are eight ymm registers per accumulator; the block finish and
 * the item finish run most of their lanes (items) four to a register and a few in
 * scalars.  Also tch128-v1's block finish, for the store's payload checksum.  Compiled with -mavx2 only (setup.py, SIMD_SOURCES); called only when
 * the CPU reports AVX2 (hash_dispatch.c).  Must give exactly the results of
 * hash_portable.c. */
#include "hash_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

/* Stripes prefetched ahead of the loop (16 = 4 KiB).  One core keeps only a few
 * lines in flight on its own: without this the loop reached 0.70x of a plain
 * read of the same buffer out of cache on a Zen 3 core, with it 0.9x.  Past the
 * block's end it touches the next block, which is what comes next in a compact
 * batch. */
#define TC_PREFETCH_STRIPES 16

static void stripes_avx2(const uint8_t *p, size_t nstripes, size_t s0,
                         uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES])
{
    __m256i acc_a[8], acc_c[8];
    for (int v = 0; v < 8; v++) {
        acc_a[v] = _mm256_loadu_si256((const __m256i *)(a + 4 * v));
        acc_c[v] = _mm256_loadu_si256((const __m256i *)(c + 4 * v));
    }
    const __m256i *lane1 = (const __m256i *)(tc_keys + TC_K_LANE1);
    const __m256i *lane2 = (const __m256i *)(tc_keys + TC_K_LANE2);
    for (size_t s = 0; s < nstripes; s++) {
        const char *ahead = (const char *)(p + (s + TC_PREFETCH_STRIPES) * TC_HASH_STRIPE_BYTES);
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
        _mm_prefetch(ahead + 128, _MM_HINT_T0);
        _mm_prefetch(ahead + 192, _MM_HINT_T0);
        __m256i ks1 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE1 + s0 + s]);
        __m256i ks2 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE2 + s0 + s]);
        const uint8_t *stripe = p + s * TC_HASH_STRIPE_BYTES;
        for (int v = 0; v < 8; v++) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(stripe + 32 * v));
            __m256i k1 = _mm256_xor_si256(_mm256_xor_si256(w, _mm256_loadu_si256(lane1 + v)), ks1);
            __m256i k2 = _mm256_xor_si256(_mm256_xor_si256(w, _mm256_loadu_si256(lane2 + v)), ks2);
            __m256i m1 = _mm256_mul_epu32(k1, _mm256_srli_epi64(k1, 32));
            __m256i m2 = _mm256_mul_epu32(k2, _mm256_srli_epi64(k2, 32));
            acc_a[v] = _mm256_add_epi64(acc_a[v], _mm256_add_epi64(w, m1));
            acc_c[v] = _mm256_add_epi64(acc_c[v], m2);
        }
    }
    for (int v = 0; v < 8; v++) {
        _mm256_storeu_si256((__m256i *)(a + 4 * v), acc_a[v]);
        _mm256_storeu_si256((__m256i *)(c + 4 * v), acc_c[v]);
    }
}

/* z * m mod 2^64 per 64-bit lane: AVX2 has no 64-bit multiply, so it is built
 * from three 32x32->64 products (the high x high one only affects bits >= 64). */
static inline __m256i mul64(__m256i z, __m256i m_lo, __m256i m_hi)
{
    /* m_hi holds hi(m) in its low 32 bits and lo(m) in its high ones: one vpmulld
     * gives lo(z) * hi(m) and hi(z) * lo(m) mod 2^32, whose sum is the cross term. */
    __m256i lo = _mm256_mul_epu32(z, m_lo);
    __m256i p = _mm256_mullo_epi32(z, m_hi);
    __m256i cross = _mm256_add_epi64(p, _mm256_slli_epi64(p, 32));
    return _mm256_add_epi64(lo, _mm256_blend_epi32(_mm256_setzero_si256(), cross, 0xAA));
}

/* docs/hash.md, section 2: fmix64 on four lanes. */
static inline __m256i fmix4(__m256i z)
{
    /* The halves of 0xff51afd7ed558ccd and 0xc4ceb9fe1a85ec53. */
    const __m256i m1_lo = _mm256_set1_epi64x(0xed558ccdLL);
    const __m256i m1_hi = _mm256_set1_epi64x(0xed558ccdff51afd7LL);
    const __m256i m2_lo = _mm256_set1_epi64x(0x1a85ec53LL);
    const __m256i m2_hi = _mm256_set1_epi64x(0x1a85ec53c4ceb9feLL);
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 33));
    z = mul64(z, m1_lo, m1_hi);
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 33));
    z = mul64(z, m2_lo, m2_hi);
    return _mm256_xor_si256(z, _mm256_srli_epi64(z, 33));
}

/* fmix64 of a lane that is meant to run in general registers: the empty asm
 * keeps the compiler from vectorising these lanes back into ymm registers,
 * which would undo the split below (gcc -O3 does so otherwise). */
static inline uint64_t fmix_gpr(uint64_t z)
{
    __asm__("" : "+r"(z));
    return tc_fmix(z);
}

static inline uint64_t hsum4(__m256i v)
{
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return (uint64_t)_mm_cvtsi128_si64(s) + (uint64_t)_mm_extract_epi64(s, 1);
}

/* The finishes below run most of their lanes (items) four to a ymm register and
 * a few in general registers.  AVX2 has no 64-bit multiply and builds one from
 * three 32-bit ones; even so, on a Zen 3 core (2026-11-27, a tight loop of
 * independent fmix64) a four-lane fmix64 cost 0.64 ns per lane and a scalar one
 * 1.25 ns, and the two kinds run on separate execution units, so a block finish
 * puts 28 of 32 lanes in registers and 4 in scalars (12 and 4 for a 16-lane
 * block).  v1's lane finish (the store's checksum) is done in two passes over all
 * lanes (first the inner fmix64 of every lane, then the outer ones) so that what
 * is in flight at once is independent work rather than one lane's chain of
 * dependent multiplies; v2's has one fmix64 per lane and no chain. */

/* tch128-v1 block finish of lanes 0 .. 4 * nv + ns - 1 (the store's payload
 * checksum): the first 4 * nv in registers, the last ns in scalars.  Inlined
 * with constant nv and ns, so fully unrolled. */
static inline __attribute__((always_inline)) void finish_lanes_v1(const uint64_t *a,
                                                                  const uint64_t *c, int nv,
                                                                  int ns, uint64_t h[2])
{
    __m256i x1[8], x2[8];
    uint64_t y1[8], y2[8];
    int j0 = 4 * nv; /* first scalar lane */
    for (int v = 0; v < nv; v++) {
        __m256i av = _mm256_loadu_si256((const __m256i *)(a + 4 * v));
        __m256i cv = _mm256_loadu_si256((const __m256i *)(c + 4 * v));
        __m256i f1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN1 + 4 * v));
        __m256i f2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN2 + 4 * v));
        x1[v] = fmix4(_mm256_xor_si256(cv, f1));
        x2[v] = fmix4(_mm256_xor_si256(av, f2));
    }
    for (int j = 0; j < ns; j++) {
        y1[j] = fmix_gpr(c[j0 + j] ^ tc_keys[TC_K_FIN1 + j0 + j]);
        y2[j] = fmix_gpr(a[j0 + j] ^ tc_keys[TC_K_FIN2 + j0 + j]);
    }
    __m256i h1 = _mm256_setzero_si256(), h2 = _mm256_setzero_si256();
    uint64_t g1 = 0, g2 = 0;
    for (int v = 0; v < nv; v++) {
        __m256i av = _mm256_loadu_si256((const __m256i *)(a + 4 * v));
        __m256i cv = _mm256_loadu_si256((const __m256i *)(c + 4 * v));
        h1 = _mm256_add_epi64(h1, fmix4(_mm256_add_epi64(av, x1[v])));
        h2 = _mm256_add_epi64(h2, fmix4(_mm256_add_epi64(cv, x2[v])));
    }
    for (int j = 0; j < ns; j++) {
        g1 += fmix_gpr(a[j0 + j] + y1[j]);
        g2 += fmix_gpr(c[j0 + j] + y2[j]);
    }
    h[0] += hsum4(h1) + g1;
    h[1] += hsum4(h2) + g2;
}

static void finish_v1_avx2(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                           uint64_t h[2])
{
    h[0] = h[1] = 0;
    finish_lanes_v1(a, c, 7, 4, h);
}

/* tch128-v2 block finish (one fmix64 per accumulator) of lanes 0 .. 4 * nv + ns - 1
 * whose accumulators are av[0..nv-1], cv[0..nv-1] (registers) and a[4 * nv ..],
 * c[4 * nv ..] (the ns scalar lanes).  Inlined with constant nv and ns. */
static inline __attribute__((always_inline)) void finish_lanes(const __m256i *av,
                                                               const __m256i *cv,
                                                               const uint64_t *a,
                                                               const uint64_t *c, int nv,
                                                               int ns, uint64_t h[2])
{
    int j0 = 4 * nv; /* first scalar lane */
    __m256i h1 = _mm256_setzero_si256(), h2 = _mm256_setzero_si256();
    uint64_t g1 = 0, g2 = 0;
    for (int v = 0; v < nv; v++) {
        __m256i f1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN1 + 4 * v));
        __m256i f2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN2 + 4 * v));
        h1 = _mm256_add_epi64(h1, fmix4(_mm256_xor_si256(av[v], f1)));
        h2 = _mm256_add_epi64(h2, _mm256_xor_si256(cv[v], f2));
    }
    for (int j = 0; j < ns; j++) {
        g1 += fmix_gpr(a[j0 + j] ^ tc_keys[TC_K_FIN1 + j0 + j]);
        g2 += c[j0 + j] ^ tc_keys[TC_K_FIN2 + j0 + j];
    }
    h[0] += hsum4(h1) + g1;
    h[1] += hsum4(h2) + g2;
}

static void finish_avx2(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                        uint64_t h[2])
{
    __m256i av[8], cv[8];
    for (int v = 0; v < 7; v++) {
        av[v] = _mm256_loadu_si256((const __m256i *)(a + 4 * v));
        cv[v] = _mm256_loadu_si256((const __m256i *)(c + 4 * v));
    }
    h[0] = h[1] = 0;
    finish_lanes(av, cv, a, c, 7, 4, h);
}

/* The one-stripe block of `n` lanes (n a multiple of 8): accumulators of the
 * first 4 * nv lanes stay in registers, the other ns go through memory to the
 * scalar finish.  Inlined with constant n, nv and ns. */
static inline __attribute__((always_inline)) void block1_lanes(const uint8_t *stripe, int n,
                                                               int nv, int ns, uint64_t h[2])
{
    const __m256i ks1 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE1]);
    const __m256i ks2 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE2]);
    __m256i av[8], cv[8];
    uint64_t a[TC_HASH_LANES], c[TC_HASH_LANES];
    for (int v = 0; v < n / 4; v++) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(stripe + 32 * v));
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE1 + 4 * v));
        __m256i l2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE2 + 4 * v));
        __m256i iv1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV1 + 4 * v));
        __m256i iv2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV2 + 4 * v));
        __m256i k1 = _mm256_xor_si256(_mm256_xor_si256(w, l1), ks1);
        __m256i k2 = _mm256_xor_si256(_mm256_xor_si256(w, l2), ks2);
        av[v] = _mm256_add_epi64(_mm256_add_epi64(iv1, w),
                                 _mm256_mul_epu32(k1, _mm256_srli_epi64(k1, 32)));
        cv[v] = _mm256_add_epi64(iv2, _mm256_mul_epu32(k2, _mm256_srli_epi64(k2, 32)));
        if (v >= nv) {
            _mm256_storeu_si256((__m256i *)(a + 4 * v), av[v]);
            _mm256_storeu_si256((__m256i *)(c + 4 * v), cv[v]);
        }
    }
    h[0] = tc_lane_tail[n][0];
    h[1] = tc_lane_tail[n][1];
    finish_lanes(av, cv, a, c, nv, ns, h);
}

void tc_block1_avx2(const uint8_t *stripe, size_t lanes, uint64_t h[2])
{
    /* Whole steps of eight lanes; the lanes past `lanes` read zeros, as the
     * tail table assumes.  Most lanes in registers, a few in scalars (above). */
    switch ((lanes + 7) / 8) {
    case 1:
        block1_lanes(stripe, 8, 2, 0, h);
        break;
    case 2:
        block1_lanes(stripe, 16, 3, 4, h);
        break;
    case 3:
        block1_lanes(stripe, 24, 5, 4, h);
        break;
    default:
        block1_lanes(stripe, 32, 7, 4, h);
        break;
    }
}

/* Absorbs stripe s (keys KS1[s], KS2[s]) into the accumulators of the 16 lanes
 * 16 * half .. 16 * half + 15, four registers each; q points at those lanes'
 * 128 bytes of the stripe. */
static inline __attribute__((always_inline)) void absorb_half(const uint8_t *q, size_t s,
                                                              int half, __m256i acc_a[4],
                                                              __m256i acc_c[4])
{
    __m256i ks1 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE1 + s]);
    __m256i ks2 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE2 + s]);
    for (int v = 0; v < 4; v++) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(q + 32 * v));
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE1 + 16 * half + 4 * v));
        __m256i l2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE2 + 16 * half + 4 * v));
        __m256i k1 = _mm256_xor_si256(_mm256_xor_si256(w, l1), ks1);
        __m256i k2 = _mm256_xor_si256(_mm256_xor_si256(w, l2), ks2);
        __m256i m1 = _mm256_mul_epu32(k1, _mm256_srli_epi64(k1, 32));
        __m256i m2 = _mm256_mul_epu32(k2, _mm256_srli_epi64(k2, 32));
        acc_a[v] = _mm256_add_epi64(acc_a[v], _mm256_add_epi64(m1, w));
        acc_c[v] = _mm256_add_epi64(acc_c[v], m2);
    }
}

/* Short blocks (2 to 16 stripes): the 32 lanes in two passes of 16, so that a
 * pass's eight accumulators stay in registers through the stripes and the
 * finish (all 32 lanes at once need 16 of AVX2's 16 ymm registers and spill).
 * The stripes of a short block are in cache after the first pass.  Large
 * blocks keep stripes_avx2, whose single pass suits data coming from DRAM. */
void tc_short_block_avx2(const uint8_t *p, size_t full, const uint8_t *last, uint64_t h[2])
{
    __m256i h1 = _mm256_setzero_si256(), h2 = _mm256_setzero_si256();
    for (int half = 0; half < 2; half++) {
        __m256i acc_a[4], acc_c[4];
        for (int v = 0; v < 4; v++) {
            acc_a[v] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV1 + 16 * half + 4 * v));
            acc_c[v] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV2 + 16 * half + 4 * v));
        }
        for (size_t s = 0; s < full; s++)
            absorb_half(p + s * TC_HASH_STRIPE_BYTES + 128 * half, s, half, acc_a, acc_c);
        if (last)
            absorb_half(last + 128 * half, full, half, acc_a, acc_c);
        for (int v = 0; v < 4; v++) {
            __m256i f1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN1 + 16 * half + 4 * v));
            __m256i f2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN2 + 16 * half + 4 * v));
            h1 = _mm256_add_epi64(h1, fmix4(_mm256_xor_si256(acc_a[v], f1)));
            h2 = _mm256_add_epi64(h2, _mm256_xor_si256(acc_c[v], f2));
        }
    }
    h[0] = hsum4(h1);
    h[1] = hsum4(h2);
}

static inline __m256i rotl4(__m256i x, int r)
{
    return _mm256_or_si256(_mm256_slli_epi64(x, r), _mm256_srli_epi64(x, 64 - r));
}

/* Items 0 .. 4 * nv + ns - 1 of in/out: the first 4 * nv four to a register,
 * the last ns in scalars (the ratio of the block finish, above).  Inlined with
 * constant nv and ns. */
static inline __attribute__((always_inline)) void items_group(const uint64_t *in,
                                                              const uint64_t *kb,
                                                              const uint64_t md[2],
                                                              uint64_t *out, int nv, int ns)
{
    __m256i s1[2], s2[2];
    uint64_t r1[4], r2[4];
    const uint64_t *sin = in + 8 * nv; /* the scalar items */
    for (int v = 0; v < nv; v++) {
        /* [t1 t2 t1 t2] x 2 -> [t1 of items 0 2 1 3], [t2 ...]; undone at the store. */
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(in + 8 * v));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(in + 8 * v + 4));
        s1[v] = _mm256_unpacklo_epi64(x0, x1);
        s2[v] = _mm256_unpackhi_epi64(x0, x1);
    }
    for (int i = 0; i < ns; i++) {
        r1[i] = sin[2 * i];
        r2[i] = sin[2 * i + 1];
    }
    if (kb) {
        for (int v = 0; v < nv; v++) {
            s1[v] = fmix4(_mm256_xor_si256(s1[v], _mm256_set1_epi64x((long long)kb[0])));
            s2[v] = fmix4(_mm256_xor_si256(s2[v], _mm256_set1_epi64x((long long)kb[1])));
        }
        for (int i = 0; i < ns; i++) {
            r1[i] = fmix_gpr(r1[i] ^ kb[0]);
            r2[i] = fmix_gpr(r2[i] ^ kb[1]);
        }
    }
    /* docs/hash.md, section 5: the sums meet the metadata digest. */
    const __m256i md1 = _mm256_set1_epi64x((long long)md[0]);
    const __m256i md2 = _mm256_set1_epi64x((long long)md[1]);
    for (int v = 0; v < nv; v++) {
        s1[v] = _mm256_xor_si256(s1[v], md1);
        s2[v] = _mm256_xor_si256(s2[v], md2);
    }
    for (int i = 0; i < ns; i++) {
        r1[i] ^= md[0];
        r2[i] ^= md[1];
    }
    for (int v = 0; v < nv; v++) {
        __m256i d1 = fmix4(_mm256_add_epi64(s1[v], rotl4(s2[v], 29)));
        __m256i d2 = fmix4(_mm256_xor_si256(s2[v], d1));
        _mm256_storeu_si256((__m256i *)(out + 8 * v), _mm256_unpacklo_epi64(d1, d2));
        _mm256_storeu_si256((__m256i *)(out + 8 * v + 4), _mm256_unpackhi_epi64(d1, d2));
    }
    uint64_t *sout = out + 8 * nv;
    for (int i = 0; i < ns; i++) {
        uint64_t e1 = fmix_gpr(r1[i] + tc_rotl64(r2[i], 29));
        sout[2 * i] = e1;
        sout[2 * i + 1] = fmix_gpr(r2[i] ^ e1);
    }
}

void tc_items_final_avx2(size_t n, const uint64_t *in, const uint64_t *kb, const uint64_t md[2],
                         uint64_t *out)
{
    /* Every register group reads all of its input before it writes (out may be
     * in), and groups do not overlap. */
    size_t i = 0;
    for (; i + 12 <= n; i += 12)
        items_group(in + 2 * i, kb, md, out + 2 * i, 2, 4);
    for (; i + 4 <= n; i += 4)
        items_group(in + 2 * i, kb, md, out + 2 * i, 1, 0);
    tc_items_final_portable(n - i, in + 2 * i, kb, md, out + 2 * i);
}

/* Items of one stripe, four at a time (tc_items1_avx2).  The lane finish of one
 * item is summed in a register of four partial sums; the four items' registers
 * are then reduced together into one register that holds the four items' h1
 * (one transpose instead of four horizontal sums), and the block term and the
 * item finish of those four items are one fmix4 each.  Per 128-byte item that
 * leaves 4 vectors of keyed products, 4 fmix4 of lane finish and 1 of item
 * finish, with no store and reload of block digests between the two.  Items are
 * read in place, whatever their length: only the registers that hold data are
 * read, the last one (if the item ends inside it) by a masked load and one load
 * of its partial word, and the lanes after them come from tc_lane_tail. */

/* [sum of a's lanes, sum of b's, sum of c's, sum of d's]. */
static inline __m256i hsum4x4(__m256i a, __m256i b, __m256i c, __m256i d)
{
    __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    __m256i cd = _mm256_add_epi64(_mm256_unpacklo_epi64(c, d), _mm256_unpackhi_epi64(c, d));
    return _mm256_add_epi64(_mm256_permute2x128_si256(ab, cd, 0x20),
                            _mm256_permute2x128_si256(ab, cd, 0x31));
}

/* The keys of the lanes of stripe 0, by register: k1 = KL1 ^ KS1[0], k2 = KL2 ^ KS2[0];
 * and, for an item that ends inside its last register, which words of that register
 * are whole (mask, for a masked load) and which one is partial (pmask). */
typedef struct {
    __m256i k1[8], k2[8], iv1[8], iv2[8], f1[8], f2[8];
    __m256i mask, pmask;
    size_t bytes;   /* the item's bytes */
    int part_shift; /* 64 - 8 * (bytes of the partial word); 0: none */
} items1_keys;

/* The last, partial word of an item of `bytes` bytes at p (its bytes as the low
 * bytes of a zero-padded word), broadcast; zero when it has none.  Read with one
 * load that ends at the item's last byte, or byte by byte below 8 bytes. */
static inline __attribute__((always_inline)) __m256i partial_word(const uint8_t *p,
                                                                  size_t bytes, int shift)
{
    if (!shift)
        return _mm256_setzero_si256();
    uint64_t t = 0;
    if (bytes >= 8) {
        memcpy(&t, p + bytes - 8, 8);
        t >>= shift;
    } else {
        for (size_t b = bytes; b-- > 0;)
            t = t << 8 | p[b];
    }
    return _mm256_set1_epi64x((long long)t);
}

/* For an item whose last register of four lanes is register r of its stripe and
 * whose stripe holds `words` whole words and then pb (< 8) bytes: which lanes of
 * that register are whole words (mask, for a masked load) and which one is the
 * partial word (pmask). */
static void last_reg_masks(size_t words, size_t pb, int r, __m256i *mask, __m256i *pmask)
{
    int64_t m[4], pm[4];
    for (int j = 0; j < 4; j++) {
        size_t lane = (size_t)(4 * r + j);
        m[j] = lane < words ? -1 : 0;
        pm[j] = pb && lane == words ? -1 : 0;
    }
    *mask = _mm256_loadu_si256((const __m256i *)m);
    *pmask = _mm256_loadu_si256((const __m256i *)pm);
}

/* One item's 4 * nv data lanes: partial sums of its lanes' shares of h1, h2.  With
 * `masked`, register nv - 1 is the end of the item: its whole words by a masked
 * load (nothing past the item is read), its partial word from partial_word, the
 * rest zeros. */
static inline __attribute__((always_inline)) void item1_lanes(const uint8_t *p,
                                                              const items1_keys *K, int nv,
                                                              int masked, __m256i *h1,
                                                              __m256i *h2)
{
    __m256i s1 = _mm256_setzero_si256(), s2 = _mm256_setzero_si256();
    for (int v = 0; v < nv; v++) {
        __m256i w;
        if (masked && v == nv - 1)
            w = _mm256_or_si256(
                _mm256_maskload_epi64((const long long *)(p + 32 * v), K->mask),
                _mm256_and_si256(partial_word(p, K->bytes, K->part_shift), K->pmask));
        else
            w = _mm256_loadu_si256((const __m256i *)(p + 32 * v));
        __m256i k1 = _mm256_xor_si256(w, K->k1[v]);
        __m256i k2 = _mm256_xor_si256(w, K->k2[v]);
        __m256i a = _mm256_add_epi64(_mm256_add_epi64(w, K->iv1[v]),
                                     _mm256_mul_epu32(k1, _mm256_srli_epi64(k1, 32)));
        __m256i c = _mm256_add_epi64(K->iv2[v], _mm256_mul_epu32(k2, _mm256_srli_epi64(k2, 32)));
        s1 = _mm256_add_epi64(s1, fmix4(_mm256_xor_si256(a, K->f1[v])));
        s2 = _mm256_add_epi64(s2, _mm256_xor_si256(c, K->f2[v]));
    }
    *h1 = s1;
    *h2 = s2;
}

/* Items per pass of items_run: the lane work of G groups of four items first,
 * then their G item finishes side by side (each is a chain of three fmix4, too
 * long to hide behind the next group's lanes on its own). */
#define TC_ITEMS1_GROUPS 4

/* The block-0 term and the item finish (docs/hash.md, sections 4 and 5) of g
 * groups of four items whose block digests are t1[k], t2[k]. */
static inline __attribute__((always_inline)) void items1_finish(const __m256i *t1,
                                                                const __m256i *t2, int g,
                                                                const uint64_t md[2],
                                                                uint64_t *out)
{
    const __m256i kb1 = _mm256_set1_epi64x((long long)tc_block0_key[0]);
    const __m256i kb2 = _mm256_set1_epi64x((long long)tc_block0_key[1]);
    const __m256i md1 = _mm256_set1_epi64x((long long)md[0]);
    const __m256i md2 = _mm256_set1_epi64x((long long)md[1]);
    __m256i s1[TC_ITEMS1_GROUPS], s2[TC_ITEMS1_GROUPS], e1[TC_ITEMS1_GROUPS];
    for (int k = 0; k < g; k++) {
        s1[k] = _mm256_xor_si256(fmix4(_mm256_xor_si256(t1[k], kb1)), md1);
        s2[k] = _mm256_xor_si256(fmix4(_mm256_xor_si256(t2[k], kb2)), md2);
    }
    for (int k = 0; k < g; k++)
        e1[k] = fmix4(_mm256_add_epi64(s1[k], rotl4(s2[k], 29)));
    for (int k = 0; k < g; k++) {
        __m256i e2 = fmix4(_mm256_xor_si256(s2[k], e1[k]));
        __m256i lo = _mm256_unpacklo_epi64(e1[k], e2); /* items 0 and 2 */
        __m256i hi = _mm256_unpackhi_epi64(e1[k], e2); /* items 1 and 3 */
        _mm256_storeu_si256((__m256i *)(out + 8 * k), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256((__m256i *)(out + 8 * k + 4), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
}

/* Items of 2 to 16 stripes (257 bytes to 4 KiB, one block each), four at a time
 * (tc_itemsN_avx2), in the spirit of items1: each item's 32 lanes run in two
 * passes of 16 (as in tc_short_block_avx2, eight accumulators in registers
 * through the stripes), their lane finish is summed in a register of four partial
 * sums, and four items' registers are reduced together and finished by
 * items1_finish.  The item is read in place: a partial last stripe is loaded with
 * masked loads (whole words) and one 8-byte load that ends at the item's last
 * byte (its last, partial word), so nothing outside the item is read and nothing
 * is copied; the lanes past the data read zeros, as the zero-padded stripe of
 * docs/hash.md, section 3 has them. */

/* What is the same for every item of a call: the keyed lane constants of every
 * stripe (KL ^ KS[s], by register of four lanes), and the shape of the last
 * stripe. */
typedef struct {
    __m256i k1[TC_SHORT_BLOCK_STRIPES][8], k2[TC_SHORT_BLOCK_STRIPES][8];
    __m256i iv1[8], iv2[8]; /* IV1, IV2, plus the products of padding-only registers */
    __m256i f1[8], f2[8];
    __m256i mask[8];  /* last stripe: the whole words of register r (maskload) */
    __m256i pmask[8]; /* last stripe: the lane of the partial word, if any */
    size_t full;      /* whole stripes */
    size_t bytes;     /* the item's bytes */
    int whole_regs;   /* last stripe: registers of four whole words */
    int data_regs;    /* last stripe: registers that hold any data */
    int part_shift;   /* 64 - 8 * (bytes of the partial word); 0: none */
} itemsN_ctx;

/* Register r (four lanes, r < data_regs) of the last, partial stripe at q (its
 * first byte), zero-padded; part is the partial word, broadcast. */
static inline __attribute__((always_inline)) __m256i last_reg(const uint8_t *q, int r,
                                                              const itemsN_ctx *C, __m256i part)
{
    if (r < C->whole_regs)
        return _mm256_loadu_si256((const __m256i *)(q + 32 * r));
    __m256i w = _mm256_maskload_epi64((const long long *)(q + 32 * r), C->mask[r]);
    return _mm256_or_si256(w, _mm256_and_si256(part, C->pmask[r]));
}

/* One stripe's registers 4 * half .. 4 * half + 3 (w) into the accumulators. */
static inline __attribute__((always_inline)) void absorb4(const __m256i w[4], const __m256i *k1,
                                                          const __m256i *k2, __m256i acc_a[4],
                                                          __m256i acc_c[4])
{
    for (int v = 0; v < 4; v++) {
        __m256i x1 = _mm256_xor_si256(w[v], k1[v]);
        __m256i x2 = _mm256_xor_si256(w[v], k2[v]);
        __m256i m1 = _mm256_mul_epu32(x1, _mm256_srli_epi64(x1, 32));
        __m256i m2 = _mm256_mul_epu32(x2, _mm256_srli_epi64(x2, 32));
        acc_a[v] = _mm256_add_epi64(acc_a[v], _mm256_add_epi64(m1, w[v]));
        acc_c[v] = _mm256_add_epi64(acc_c[v], m2);
    }
}

/* One item's 32 lanes: partial sums (four to a register) of their shares of
 * h1, h2 (docs/hash.md, section 4). */
static inline __attribute__((always_inline)) void itemN_lanes(const uint8_t *p,
                                                              const itemsN_ctx *C,
                                                              __m256i *h1, __m256i *h2)
{
    __m256i s1 = _mm256_setzero_si256(), s2 = _mm256_setzero_si256();
    __m256i part = partial_word(p, C->bytes, C->part_shift);
    const uint8_t *last = p + C->full * TC_HASH_STRIPE_BYTES;
    for (int half = 0; half < 2; half++) {
        __m256i acc_a[4], acc_c[4], w[4];
        for (int v = 0; v < 4; v++) {
            acc_a[v] = C->iv1[4 * half + v];
            acc_c[v] = C->iv2[4 * half + v];
        }
        for (size_t s = 0; s < C->full; s++) {
            const uint8_t *q = p + s * TC_HASH_STRIPE_BYTES + 128 * half;
            for (int v = 0; v < 4; v++)
                w[v] = _mm256_loadu_si256((const __m256i *)(q + 32 * v));
            absorb4(w, C->k1[s] + 4 * half, C->k2[s] + 4 * half, acc_a, acc_c);
        }
        /* The last stripe's registers that hold data; those that read only
         * zero padding are constants, already in acc (iv1, iv2). */
        for (int v = 0; v < 4; v++) {
            int r = 4 * half + v;
            if (r < C->data_regs) {
                __m256i x = last_reg(last, r, C, part);
                __m256i x1 = _mm256_xor_si256(x, C->k1[C->full][r]);
                __m256i x2 = _mm256_xor_si256(x, C->k2[C->full][r]);
                __m256i m1 = _mm256_mul_epu32(x1, _mm256_srli_epi64(x1, 32));
                __m256i m2 = _mm256_mul_epu32(x2, _mm256_srli_epi64(x2, 32));
                acc_a[v] = _mm256_add_epi64(acc_a[v], _mm256_add_epi64(m1, x));
                acc_c[v] = _mm256_add_epi64(acc_c[v], m2);
            }
        }
        for (int v = 0; v < 4; v++) {
            s1 = _mm256_add_epi64(s1, fmix4(_mm256_xor_si256(acc_a[v], C->f1[4 * half + v])));
            s2 = _mm256_add_epi64(s2, _mm256_xor_si256(acc_c[v], C->f2[4 * half + v]));
        }
    }
    *h1 = s1;
    *h2 = s2;
}

/* One item's lane sums for the driver below: itemN_lanes when C is given, else
 * item1_lanes, whose lanes after its 4 * nv data lanes (padding only) are added
 * from tc_lane_tail by the driver. */
static inline __attribute__((always_inline)) void item_lanes(const uint8_t *p,
                                                             const items1_keys *K, int nv,
                                                             int masked, const itemsN_ctx *C,
                                                             __m256i *h1, __m256i *h2)
{
    if (C)
        itemN_lanes(p, C, h1, h2);
    else
        item1_lanes(p, K, nv, masked, h1, h2);
}

/* The driver of items1 and itemsN: items in groups of four, TC_ITEMS1_GROUPS
 * groups per pass (their lane work first, then their finishes side by side), and
 * the last n % 4 items as one group whose missing items repeat the last one.
 * Inlined with constant arguments: C is NULL for items1 (keys K, nv data
 * registers, masked last register), else the itemsN context. */
static inline __attribute__((always_inline)) void items_run(const uint8_t *base, ptrdiff_t stride,
                                                            size_t n, const items1_keys *K,
                                                            int nv, int masked,
                                                            const itemsN_ctx *C,
                                                            const uint64_t md[2], uint64_t *out)
{
    /* items1's padding-only lanes; itemsN has its own in C->iv1, C->iv2. */
    const __m256i tail1 =
        C ? _mm256_setzero_si256() : _mm256_set1_epi64x((long long)tc_lane_tail[4 * nv][0]);
    const __m256i tail2 =
        C ? _mm256_setzero_si256() : _mm256_set1_epi64x((long long)tc_lane_tail[4 * nv][1]);
    size_t i = 0;
    while (i + 4 <= n) {
        size_t g = (n - i) / 4 < TC_ITEMS1_GROUPS ? (n - i) / 4 : TC_ITEMS1_GROUPS;
        __m256i t1[TC_ITEMS1_GROUPS], t2[TC_ITEMS1_GROUPS];
        for (size_t k = 0; k < g; k++) {
            __m256i a1, b1, c1, d1, a2, b2, c2, d2;
            const uint8_t *p = base + (ptrdiff_t)(i + 4 * k) * stride;
            item_lanes(p, K, nv, masked, C, &a1, &a2);
            item_lanes(p + stride, K, nv, masked, C, &b1, &b2);
            item_lanes(p + 2 * stride, K, nv, masked, C, &c1, &c2);
            item_lanes(p + 3 * stride, K, nv, masked, C, &d1, &d2);
            t1[k] = _mm256_add_epi64(hsum4x4(a1, b1, c1, d1), tail1);
            t2[k] = _mm256_add_epi64(hsum4x4(a2, b2, c2, d2), tail2);
        }
        if (g == TC_ITEMS1_GROUPS)
            items1_finish(t1, t2, TC_ITEMS1_GROUPS, md, out + 2 * i);
        else
            for (size_t k = 0; k < g; k++)
                items1_finish(t1 + k, t2 + k, 1, md, out + 2 * i + 8 * k);
        i += 4 * g;
    }
    if (i < n) {
        /* The last n % 4 items: a group of four whose missing items repeat the
         * last one; only the real ones are written. */
        __m256i a[4][2];
        for (size_t k = 0; k < 4; k++) {
            size_t j = i + k < n ? i + k : n - 1;
            item_lanes(base + (ptrdiff_t)j * stride, K, nv, masked, C, &a[k][0], &a[k][1]);
        }
        __m256i t1 = _mm256_add_epi64(hsum4x4(a[0][0], a[1][0], a[2][0], a[3][0]), tail1);
        __m256i t2 = _mm256_add_epi64(hsum4x4(a[0][1], a[1][1], a[2][1], a[3][1]), tail2);
        uint64_t tmp[8];
        items1_finish(&t1, &t2, 1, md, tmp);
        memcpy(out + 2 * i, tmp, 2 * sizeof(uint64_t) * (n - i));
    }
}

static void tc_items1_avx2(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                           const uint64_t md[2], uint64_t *out)
{
    /* Registers of four lanes that hold data; the lanes after them read only
     * padding and come from tc_lane_tail. */
    size_t words = bytes / 8, pb = bytes % 8;
    int nv = (int)((words + (pb != 0) + 3) / 4);
    int masked = bytes % 32 != 0;
    items1_keys K;
    K.bytes = bytes;
    K.part_shift = pb ? (int)(64 - 8 * pb) : 0;
    last_reg_masks(words, pb, nv - 1, &K.mask, &K.pmask);
    const __m256i ks1 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE1]);
    const __m256i ks2 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE2]);
    for (int v = 0; v < nv; v++) {
        __m256i l1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE1 + 4 * v));
        __m256i l2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE2 + 4 * v));
        K.k1[v] = _mm256_xor_si256(ks1, l1);
        K.k2[v] = _mm256_xor_si256(ks2, l2);
        K.iv1[v] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV1 + 4 * v));
        K.iv2[v] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV2 + 4 * v));
        K.f1[v] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN1 + 4 * v));
        K.f2[v] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN2 + 4 * v));
    }
    /* One instance per register count, with and without a partial last register. */
#define TC_ITEMS1_CASE(NV)                                                  \
    case NV:                                                                \
        if (masked)                                                         \
            items_run(base, stride, n, &K, NV, 1, NULL, md, out);           \
        else                                                                \
            items_run(base, stride, n, &K, NV, 0, NULL, md, out);           \
        break;
    switch (nv) {
        TC_ITEMS1_CASE(1)
        TC_ITEMS1_CASE(2)
        TC_ITEMS1_CASE(3)
        TC_ITEMS1_CASE(4)
        TC_ITEMS1_CASE(5)
        TC_ITEMS1_CASE(6)
        TC_ITEMS1_CASE(7)
    default:
        if (masked)
            items_run(base, stride, n, &K, 8, 1, NULL, md, out);
        else
            items_run(base, stride, n, &K, 8, 0, NULL, md, out);
        break;
    }
#undef TC_ITEMS1_CASE
}

static void tc_itemsN_avx2(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                           const uint64_t md[2], uint64_t *out)
{
    itemsN_ctx C;
    C.bytes = bytes;
    C.full = bytes / TC_HASH_STRIPE_BYTES;
    size_t rest = bytes % TC_HASH_STRIPE_BYTES;
    size_t words = rest / 8, pb = rest % 8;
    size_t nst = C.full + (rest != 0);
    C.whole_regs = (int)(words / 4);
    C.data_regs = (int)((words + (pb != 0) + 3) / 4);
    C.part_shift = pb ? (int)(64 - 8 * pb) : 0;
    for (int r = 0; r < 8; r++) {
        last_reg_masks(words, pb, r, &C.mask[r], &C.pmask[r]);
        C.iv1[r] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV1 + 4 * r));
        C.iv2[r] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_IV2 + 4 * r));
        C.f1[r] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN1 + 4 * r));
        C.f2[r] = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_FIN2 + 4 * r));
    }
    for (size_t s = 0; s < nst; s++) {
        __m256i ks1 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE1 + s]);
        __m256i ks2 = _mm256_set1_epi64x((long long)tc_keys[TC_K_STRIPE2 + s]);
        for (int r = 0; r < 8; r++) {
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE1 + 4 * r));
            __m256i l2 = _mm256_loadu_si256((const __m256i *)(tc_keys + TC_K_LANE2 + 4 * r));
            C.k1[s][r] = _mm256_xor_si256(ks1, l1);
            C.k2[s][r] = _mm256_xor_si256(ks2, l2);
        }
    }
    /* A register of the last stripe that reads only zero padding (w = 0) adds
     * the same product to every item's accumulators: it starts there. */
    for (int r = rest ? C.data_regs : 8; r < 8; r++) {
        __m256i x1 = C.k1[C.full][r], x2 = C.k2[C.full][r];
        C.iv1[r] = _mm256_add_epi64(C.iv1[r], _mm256_mul_epu32(x1, _mm256_srli_epi64(x1, 32)));
        C.iv2[r] = _mm256_add_epi64(C.iv2[r], _mm256_mul_epu32(x2, _mm256_srli_epi64(x2, 32)));
    }
    items_run(base, stride, n, NULL, 8, 0, &C, md, out);
}

const tc_hash_kernels tc_kernels_avx2 = {
    TC_SIMD_AVX2, stripes_avx2, finish_avx2, finish_v1_avx2, tc_block1_avx2,
    tc_short_block_avx2, tc_items_final_avx2, tc_items1_avx2, tc_itemsN_avx2,
};
#endif
