/* hash_cuda.cu -- tch128-v2 (docs/hash.md) as CUDA kernels; docs/cuda.md
 * explains the decomposition.  C-style CUDA: extern "C" kernels, no cudart,
 * no templates.  setup.py compiles this file to a fatbin that the extension
 * embeds; cuda.c loads it through the driver API and launches:
 *
 *   tc_gather       only for non-compact items and samples: the item's stream
 *                   of bytes (row-major elements, or sample elements) into a
 *                   compact scratch buffer;
 *   tc_hash_blocks  one warp per 16 KiB block, lane j = hash lane j, each
 *                   block's terms added atomically to its item's two sums;
 *   tc_finish       one thread per item: the metadata finish, in place.
 *
 * All arithmetic lives in hash_cuda_common.h, shared with the CPU emulation
 * test; this file holds only the thread geometry. */
#include "hash_cuda_common.h"

extern "C" __global__ void __launch_bounds__(32 * TC_CU_WARPS_PER_CTA)
tc_hash_blocks(const tc_cu_blocks_args args)
{
    /* Stripe keys are uniform across a warp: one shared copy per CTA is read
     * as a broadcast, and computing it here needs no per-context upload. */
    __shared__ uint64_t ks[TC_CU_STRIPE_KEYS];
    for (unsigned i = threadIdx.x; i < TC_CU_STRIPE_KEYS; i += blockDim.x)
        ks[i] = tc_cu_key(TC_K_STRIPE1 + i);
    __syncthreads();

    const uint8_t *p;
    uint64_t n, item, b;
    uint64_t warp = (uint64_t)blockIdx.x * TC_CU_WARPS_PER_CTA + (threadIdx.x >> 5);
    if (!tc_cu_warp_block(&args, warp, &p, &n, &item, &b))
        return; /* the whole warp: the shuffles below see all 32 lanes */
    unsigned lane = threadIdx.x & 31;
    uint64_t h1, h2;
    tc_cu_lane_block(p, n, lane, ks, &h1, &h2);
    /* Sums mod 2^64: any reduction order gives the reference's value. */
    for (int off = 16; off > 0; off >>= 1) {
        h1 += __shfl_xor_sync(0xffffffffu, h1, off);
        h2 += __shfl_xor_sync(0xffffffffu, h2, off);
    }
    if (lane == 0) {
        unsigned long long *acc = (unsigned long long *)(uintptr_t)args.acc + 2 * item;
        atomicAdd(acc, (unsigned long long)tc_cu_block_term1(h1, b));
        atomicAdd(acc + 1, (unsigned long long)tc_cu_block_term2(h2, b));
    }
}

extern "C" __global__ void tc_gather(const tc_cu_gather_args args)
{
    uint64_t total = tc_cu_gather_total(&args);
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (uint64_t)gridDim.x * blockDim.x)
        tc_cu_gather_element(&args, i);
}

extern "C" __global__ void tc_finish(const tc_cu_finish_args args)
{
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= args.batch)
        return;
    uint64_t *acc = (uint64_t *)(uintptr_t)args.acc + 2 * i;
    uint64_t t[2] = {acc[0], acc[1]};
    tc_cu_finish(t, args.sample_count, args.dtype_word, args.nbytes, args.nblocks, args.ndim,
                 args.shape);
    acc[0] = t[0];
    acc[1] = t[1];
}
