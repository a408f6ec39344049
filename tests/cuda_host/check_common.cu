/* check_common.cu -- runs the CUDA engine's work on the CPU: the plan of
 * cuda.c and, for every launch, every thread of hash_cuda.cu's kernels, all
 * through the same functions of csrc/hash_cuda_common.h that the kernels call.
 * Only the thread geometry is emulated: the warp's shuffle reduction and the
 * atomics are sums mod 2^64, so they are summed here in a shuffled order.
 *
 * Host code only (built by nvcc, runs without a GPU); driven by
 * tests/test_cuda_host_emulation.py, which compares its digests with the
 * C reference.  Usage:
 *
 *   check_common STORAGE_FILE BYTE_OFFSET ITEMSIZE DTYPE_WORD SAMPLE_COUNT
 *                SCRATCH_CAP NDIM SHAPE... STRIDES...
 *
 * STORAGE_FILE holds the tensor's whole storage; shape and strides (in
 * elements) include the batch dimension.  Prints one "d1 d2" line per item,
 * as unsigned decimals. */
#include "hash_cuda_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A deterministic shuffle of the 32 lane terms, so the test does not depend
 * on one summation order. */
static uint64_t sum_lanes(const uint64_t v[32], uint64_t seed)
{
    unsigned order[32];
    for (unsigned j = 0; j < 32; j++)
        order[j] = j;
    for (unsigned j = 31; j > 0; j--) {
        seed = tc_cu_fmix64(seed + j);
        unsigned r = (unsigned)(seed % (j + 1));
        unsigned t = order[j];
        order[j] = order[r];
        order[r] = t;
    }
    uint64_t s = 0;
    for (unsigned j = 0; j < 32; j++)
        s += v[order[j]];
    return s;
}

static void emulate_hash_blocks(const tc_cu_blocks_args *a)
{
    uint64_t ks[TC_CU_STRIPE_KEYS];
    for (unsigned i = 0; i < TC_CU_STRIPE_KEYS; i++)
        ks[i] = tc_cu_key(TC_K_STRIPE1 + i);
    uint64_t warps = a->nitems * a->blk_count;
    uint64_t ctas = (warps + TC_CU_WARPS_PER_CTA - 1) / TC_CU_WARPS_PER_CTA;
    /* Warps in reverse: block terms reach the sums in another order than the
     * reference's. */
    for (uint64_t w = ctas * TC_CU_WARPS_PER_CTA; w-- > 0;) {
        const uint8_t *p;
        uint64_t n, item, b;
        if (!tc_cu_warp_block(a, w, &p, &n, &item, &b))
            continue;
        uint64_t h1[32], h2[32];
        for (unsigned lane = 0; lane < 32; lane++)
            tc_cu_lane_block(p, n, lane, ks, &h1[lane], &h2[lane]);
        uint64_t *acc = (uint64_t *)(uintptr_t)a->acc + 2 * item;
        acc[0] += tc_cu_block_term1(sum_lanes(h1, w), b);
        acc[1] += tc_cu_block_term2(sum_lanes(h2, ~w), b);
    }
}

static void emulate_gather(const tc_cu_gather_args *a)
{
    uint64_t total = tc_cu_gather_total(a);
    for (uint64_t i = 0; i < total; i++)
        tc_cu_gather_element(a, i);
}

static void emulate_finish(const tc_cu_finish_args *f)
{
    for (uint64_t i = 0; i < f->batch; i++) {
        uint64_t *acc = (uint64_t *)(uintptr_t)f->acc + 2 * i;
        tc_cu_finish(acc, f->sample_count, f->dtype_word, f->nbytes, f->nblocks, f->ndim,
                     f->shape);
    }
}

/* 256-byte aligned like a device allocation, with slack after the end: the
 * kernels' aligned loads may touch the rest of an item's last 8-byte word. */
static uint8_t *alloc_aligned(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 256, n + 64) != 0) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(p, 0xA5, n + 64);
    return (uint8_t *)p;
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: %s STORAGE BYTE_OFFSET ITEMSIZE DTYPE_WORD SAMPLE_COUNT "
                        "SCRATCH_CAP NDIM SHAPE... STRIDES...\n", argv[0]);
        return 2;
    }
    int ndim = atoi(argv[7]);
    if (ndim < 1 || ndim > TC_CU_MAX_DIMS || argc != 8 + 2 * ndim) {
        fprintf(stderr, "bad NDIM or number of shape/stride arguments\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {
        perror(argv[1]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    size_t storage_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *storage = alloc_aligned(storage_len);
    if (fread(storage, 1, storage_len, f) != storage_len) {
        fprintf(stderr, "short read\n");
        return 2;
    }
    fclose(f);

    static tc_cu_plan pl;
    pl.data = (uint64_t)(uintptr_t)(storage + strtoull(argv[2], NULL, 10));
    pl.itemsize = strtoull(argv[3], NULL, 10);
    pl.dtype_word = strtoull(argv[4], NULL, 10);
    pl.sample_count = strtoull(argv[5], NULL, 10);
    pl.scratch_cap = strtoull(argv[6], NULL, 10);
    pl.batch = strtoull(argv[8], NULL, 10);
    pl.item_stride = strtoll(argv[8 + ndim], NULL, 10);
    pl.ndim = ndim - 1;
    for (int d = 1; d < ndim; d++) {
        pl.shape[d - 1] = strtoll(argv[8 + d], NULL, 10);
        pl.strides[d - 1] = strtoll(argv[8 + ndim + d], NULL, 10);
    }
    tc_cu_plan_init(&pl);

    /* What cuda.c allocates: the sums, then the scratch. */
    uint64_t acc_bytes = (16 * pl.batch + 255) / 256 * 256;
    uint8_t *mem = alloc_aligned(acc_bytes + pl.scratch_bytes);
    memset(mem, 0, acc_bytes);
    uint64_t acc = (uint64_t)(uintptr_t)mem, scratch = acc + acc_bytes;
    tc_cu_step st;
    unsigned long steps = 0;
    while (tc_cu_plan_next(&pl, scratch, acc, &st)) {
        if (st.gather) {
            if (st.g.p1 - st.g.p0 + (st.g.nitems - 1) * st.g.dst_item_stride > pl.scratch_bytes) {
                fprintf(stderr, "step overruns the scratch buffer\n");
                return 1;
            }
            emulate_gather(&st.g);
        }
        emulate_hash_blocks(&st.h);
        steps++;
    }
    tc_cu_finish_args fin;
    tc_cu_plan_finish_args(&pl, acc, &fin);
    emulate_finish(&fin);
    const uint64_t *digests = (const uint64_t *)mem;
    for (uint64_t i = 0; i < pl.batch; i++)
        printf("%llu %llu\n", (unsigned long long)digests[2 * i],
               (unsigned long long)digests[2 * i + 1]);
    fprintf(stderr, "direct=%d steps=%lu scratch=%llu\n", pl.direct, steps,
            (unsigned long long)pl.scratch_bytes);
    free(storage);
    free(mem);
    return 0;
}
