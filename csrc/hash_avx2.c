/* hash_avx2.c -- the tch128-v1 stripe loop with AVX2: the 32 lanes are eight
 * ymm registers per accumulator.  Compiled with -mavx2 only; called only when
 * the CPU reports AVX2 (hash_dispatch.c).  Must give exactly the results of
 * tc_stripes_portable (tests/test_hash_vectors.py checks). */
#include "hash_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

void tc_stripes_avx2(const uint8_t *p, size_t nstripes, size_t s0,
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
#endif
