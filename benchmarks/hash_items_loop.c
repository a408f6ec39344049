/* hash_items_loop.c -- ns per item of tc_hash_batch (one thread) against
 * XXH3_128bits called per item, both from C, interleaved, best of N in this
 * thread's CPU time: the less disturbed companion of bench_hash.py's item sweep
 * (docs/hash.md, section 9).  Before timing it checks every digest of the batch
 * against the portable level and prints MISMATCH if one differs.
 *
 * Build (from the repository root; the SIMD files take their flags from
 * setup.py's SIMD_SOURCES):
 *   d=$(mktemp -d)
 *   gcc -O3 -std=c11 -fPIC -Icsrc -mavx2 -c csrc/hash_avx2.c -o $d/avx2.o
 *   gcc -O3 -std=c11 -fPIC -Icsrc -mavx512f -mavx512dq -c csrc/hash_avx512.c -o $d/avx512.o
 *   gcc -O3 -std=c11 -D_GNU_SOURCE -Icsrc -o $d/loop benchmarks/hash_items_loop.c \
 *       csrc/hash.c csrc/hash_batch.c csrc/hash_dispatch.c csrc/hash_portable.c \
 *       $d/avx2.o $d/avx512.o -ldl -lpthread
 * Run:
 *   XXLIB=$(python -c 'import xxhash; print(xxhash._xxhash.__file__)') \
 *       $d/loop 64,128,192,256,512,3072 [working-set bytes, 4 MiB] [repeats, 200]
 * XXLIB is python-xxhash's extension (the XXH3-128 that bench_hash.py uses); it
 * needs libpython's symbols, loaded first from PYLIB (default libpython3.11.so.1). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "hash_internal.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    uint64_t lo, hi;
} xxh128;
typedef xxh128 (*xxh3_fn)(const void *, size_t);

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SIZES [WORKING_SET_BYTES [REPEATS]]\n", argv[0]);
        return 2;
    }
    const char *pylib = getenv("PYLIB") ? getenv("PYLIB") : "libpython3.11.so.1";
    const char *xxlib = getenv("XXLIB");
    if (xxlib == NULL || dlopen(pylib, RTLD_NOW | RTLD_GLOBAL) == NULL) {
        fprintf(stderr, "set XXLIB to python-xxhash's extension (and PYLIB to libpython)\n");
        return 2;
    }
    void *h = dlopen(xxlib, RTLD_NOW);
    xxh3_fn xxh3 = h ? (xxh3_fn)dlsym(h, "XXH3_128bits") : NULL;
    if (xxh3 == NULL) {
        fprintf(stderr, "no XXH3_128bits in %s: %s\n", xxlib, dlerror());
        return 2;
    }
    tc_hash_init();
    size_t total = argc > 2 ? strtoull(argv[2], NULL, 0) : (4u << 20);
    int reps = argc > 3 ? atoi(argv[3]) : 200;
    char *sizes = strdup(argv[1]);
    int bad = 0;
    for (char *tok = strtok(sizes, ","); tok; tok = strtok(NULL, ",")) {
        size_t item = strtoull(tok, NULL, 0);
        size_t n = item ? total / item : 0;
        if (n == 0)
            continue;
        uint8_t *buf = aligned_alloc(64, (n * item + 63) & ~(size_t)63);
        uint64_t *dig = malloc(16 * n), *ref = malloc(16 * n);
        for (size_t i = 0; i < n * item; i++)
            buf[i] = (uint8_t)rand();
        int64_t shape[1] = {(int64_t)item}, strides[1] = {1};
        tc_batch b = {buf, (int64_t)item, (int64_t)n,
                      {NULL, 1, 1, shape, strides, 1 | 8 << 8 | 1 << 16}}; /* uint8 */
        tc_hash_simd_force(TC_SIMD_PORTABLE);
        tc_hash_batch(&b, 0, 1, ref);
        tc_hash_simd_force(tc_hash_simd_best());
        tc_hash_batch(&b, 0, 1, dig);
        if (memcmp(ref, dig, 16 * n) != 0) {
            printf("MISMATCH at %zu B\n", item);
            bad = 1;
        }
        double best_hash = 1e9, best_xxh = 1e9;
        uint64_t sink = 0;
        for (int r = 0; r < reps; r++) {
            double t0 = cpu_now();
            tc_hash_batch(&b, 0, 1, dig);
            double t1 = cpu_now();
            if (t1 - t0 < best_hash)
                best_hash = t1 - t0;
            sink += dig[0];
            t0 = cpu_now();
            for (size_t i = 0; i < n; i++) {
                xxh128 d = xxh3(buf + i * item, item);
                sink += d.lo ^ d.hi;
            }
            t1 = cpu_now();
            if (t1 - t0 < best_xxh)
                best_xxh = t1 - t0;
        }
        printf("%6zu B: tch128-v2 %7.2f ns  XXH3-128 %7.2f ns  ratio %.2f  (%s, %x)\n", item,
               best_hash / n * 1e9, best_xxh / n * 1e9, best_hash / best_xxh,
               tc_hash_simd_name(tc_hash_simd_active()), (unsigned)(sink & 0xff));
        free(buf);
        free(dig);
        free(ref);
    }
    free(sizes);
    return bad;
}
