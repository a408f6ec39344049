/* hash_avx512.c -- the tch128-v2 stripe loop and block finish with AVX-512F/DQ
 * (and tch128-v1's block finish, for the store's payload checksum):
 * the 32 lanes are four zmm registers per accumulator.  The one-stripe block,
 * the short block, items1, itemsN and the item finish are the AVX2 kernels (an
 * AVX-512 CPU has AVX2).
 * Compiled with -mavx512f -mavx512dq only (setup.py, SIMD_SOURCES); called only
 * when the CPU reports both (hash_dispatch.c).  Must give exactly the results
 * of hash_portable.c. */
#include "hash_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

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

const tc_hash_kernels tc_kernels_avx512 = {
    TC_SIMD_AVX512, stripes_avx512, finish_avx512, finish_v1_avx512, tc_block1_avx2,
    tc_short_block_avx2, tc_items_final_avx2, tc_items1_avx2, tc_itemsN_avx2,
};
#endif
