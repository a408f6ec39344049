/* hash_dispatch.c -- the one owner of SIMD dispatch for the item hash: it detects
 * what the CPU has, holds the kernels in use (one atomic pointer, the only
 * mutable global of the hash) and switches them.  Nothing else names a level's
 * kernels.  TORCHCACHE_C_SIMD=portable|avx2|avx512 caps the level (for tests,
 * benchmarks and for users who need bit-for-bit the reference code path). */
#include "hash_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static int simd_best = TC_SIMD_PORTABLE;
static _Atomic(const tc_hash_kernels *) active = &tc_kernels_portable;

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

static const tc_hash_kernels *kernels_for(int level)
{
#ifdef TC_HAVE_X86_VARIANTS
    if (level == TC_SIMD_AVX512)
        return &tc_kernels_avx512;
    if (level == TC_SIMD_AVX2)
        return &tc_kernels_avx2;
#endif
    return &tc_kernels_portable;
}

const tc_hash_kernels *tc_hash_kernels_active(void)
{
    /* The tables are constant; acquire pairs with the release below only so
     * that a reader never sees a pointer before the keys it implies. */
    return atomic_load_explicit(&active, memory_order_acquire);
}

int tc_hash_simd_force(int level)
{
    if (level < TC_SIMD_PORTABLE || level > simd_best)
        return -1;
    atomic_store_explicit(&active, kernels_for(level), memory_order_release);
    return 0;
}

int tc_hash_simd_best(void)
{
    return simd_best;
}

int tc_hash_simd_active(void)
{
    return tc_hash_kernels_active()->level;
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_all(void)
{
    tc_hash_tables_init();
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

void tc_hash_init(void)
{
    pthread_once(&init_once, init_all);
}
