/* hash_dispatch.c -- picks the stripe loop for this CPU at run time, once.
 * TORCHCACHE_C_SIMD=portable|avx2|avx512 caps the level (for tests, benchmarks
 * and for users who need bit-for-bit the reference code path). */
#include "hash_internal.h"

#include <stdlib.h>
#include <string.h>

static int simd_best = TC_SIMD_PORTABLE;
static int simd_active = TC_SIMD_PORTABLE;

static const char *const simd_names[] = {"portable", "avx2", "avx512"};

const char *tc_hash_simd_name(int level)
{
    return (level >= 0 && level <= TC_SIMD_AVX512) ? simd_names[level] : "unknown";
}

static int detect(void)
{
#ifdef TC_HAVE_X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        return TC_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2"))
        return TC_SIMD_AVX2;
#endif
    return TC_SIMD_PORTABLE;
}

static tc_stripes_fn fn_for(int level)
{
#ifdef TC_HAVE_X86_VARIANTS
    if (level == TC_SIMD_AVX512)
        return tc_stripes_avx512;
    if (level == TC_SIMD_AVX2)
        return tc_stripes_avx2;
#endif
    return tc_stripes_portable;
}

int tc_hash_simd_force(int level)
{
    if (level < TC_SIMD_PORTABLE || level > simd_best)
        return -1;
    simd_active = level;
    tc_stripes_active = fn_for(level);
#ifdef TC_HAVE_X86_VARIANTS
    tc_finish_active = level == TC_SIMD_AVX512 ? tc_finish_avx512 : tc_finish_portable;
#endif
    return 0;
}

void tc_hash_select_best(void)
{
    simd_best = detect();
    int level = simd_best;
    const char *cap = getenv("TORCHCACHE_C_SIMD");
    if (cap) {
        for (int l = TC_SIMD_PORTABLE; l <= TC_SIMD_AVX512; l++)
            if (strcmp(cap, simd_names[l]) == 0 && l < level)
                level = l;
    }
    tc_hash_simd_force(level);
}

int tc_hash_simd_best(void)
{
    return simd_best;
}

int tc_hash_simd_active(void)
{
    return simd_active;
}
