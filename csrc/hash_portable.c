/* hash_portable.c -- the reference kernels of tch128-v2 (docs/hash.md) in plain C:
 * keys, fmix64, the stripe loop, the block finish and the item finish; and
 * tch128-v1's block finish, which the store's payload checksum keeps.
 *
 * This file is the definition the SIMD kernels (hash_avx2.c, hash_avx512.c) and
 * the CUDA engine are tested against, and the only path on other architectures.
 * It never allocates and never touches Python. */
#include "hash_internal.h"
#include "le_bytes.h"

#include <string.h>

#define TC_KEY_SEED 0x7463683132387631ULL /* "tch128v1" */

uint64_t tc_keys[TC_K_COUNT];
uint64_t tc_lane_tail[TC_HASH_LANES + 1][2];
uint64_t tc_block0_key[2];


uint64_t tc_fmix64(uint64_t z)
{
    return tc_fmix(z);
}

/* docs/hash.md, section 2: key(i) is the i-th output of SplitMix64. */
uint64_t tc_hash_key(uint64_t index)
{
    uint64_t z = TC_KEY_SEED + (index + 1) * TC_GAMMA;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t mul_lo_hi(uint64_t k)
{
    return (k & 0xffffffffULL) * (k >> 32);
}

void tc_hash_tables_init(void)
{
    for (uint64_t i = 0; i < TC_K_COUNT; i++)
        tc_keys[i] = tc_hash_key(i);
    /* Lanes that read only zeros in stripe 0: w = 0 in section 4's loop. */
    tc_lane_tail[TC_HASH_LANES][0] = tc_lane_tail[TC_HASH_LANES][1] = 0;
    for (int j = TC_HASH_LANES - 1; j >= 0; j--) {
        uint64_t a = tc_keys[TC_K_IV1 + j] +
                     mul_lo_hi(tc_keys[TC_K_LANE1 + j] ^ tc_keys[TC_K_STRIPE1]);
        uint64_t c = tc_keys[TC_K_IV2 + j] +
                     mul_lo_hi(tc_keys[TC_K_LANE2 + j] ^ tc_keys[TC_K_STRIPE2]);
        uint64_t h1 = tc_lane_tail[j + 1][0], h2 = tc_lane_tail[j + 1][1];
        tc_lane_finish(a, c, j, &h1, &h2);
        tc_lane_tail[j][0] = h1;
        tc_lane_tail[j][1] = h2;
    }
    tc_block0_key[0] = tc_fmix(0 + tc_keys[TC_K_BLOCK1]);
    tc_block0_key[1] = tc_fmix(0 + tc_keys[TC_K_BLOCK2]);
}

static void stripes_portable(const uint8_t *p, size_t nstripes, size_t s0,
                             uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES])
{
    for (size_t s = 0; s < nstripes; s++) {
        uint64_t ks1 = tc_keys[TC_K_STRIPE1 + s0 + s];
        uint64_t ks2 = tc_keys[TC_K_STRIPE2 + s0 + s];
        const uint8_t *stripe = p + s * TC_HASH_STRIPE_BYTES;
        for (int j = 0; j < TC_HASH_LANES; j++) {
            uint64_t w = tc_get_le64(stripe + 8 * j);
            a[j] += w + mul_lo_hi(w ^ tc_keys[TC_K_LANE1 + j] ^ ks1);
            c[j] += mul_lo_hi(w ^ tc_keys[TC_K_LANE2 + j] ^ ks2);
        }
    }
}

static void finish_portable(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                            uint64_t h[2])
{
    uint64_t h1 = 0, h2 = 0;
    for (int j = 0; j < TC_HASH_LANES; j++)
        tc_lane_finish(a[j], c[j], j, &h1, &h2);
    h[0] = h1;
    h[1] = h2;
}

void tc_finish_v1_portable(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                           uint64_t h[2])
{
    uint64_t h1 = 0, h2 = 0;
    for (int j = 0; j < TC_HASH_LANES; j++)
        tc_lane_finish_v1(a[j], c[j], j, &h1, &h2);
    h[0] = h1;
    h[1] = h2;
}

static void block1_portable(const uint8_t *stripe, size_t lanes, uint64_t h[2])
{
    uint64_t h1 = tc_lane_tail[lanes][0], h2 = tc_lane_tail[lanes][1];
    for (size_t j = 0; j < lanes; j++) {
        uint64_t w = tc_get_le64(stripe + 8 * j);
        uint64_t a = tc_keys[TC_K_IV1 + j] + w +
                     mul_lo_hi(w ^ tc_keys[TC_K_LANE1 + j] ^ tc_keys[TC_K_STRIPE1]);
        uint64_t c = tc_keys[TC_K_IV2 + j] +
                     mul_lo_hi(w ^ tc_keys[TC_K_LANE2 + j] ^ tc_keys[TC_K_STRIPE2]);
        tc_lane_finish(a, c, (int)j, &h1, &h2);
    }
    h[0] = h1;
    h[1] = h2;
}

/* docs/hash.md, section 5. */
void tc_meta_digest(const uint64_t *meta, size_t nmeta, uint64_t md[2])
{
    uint64_t m1 = tc_keys[TC_K_SEED1], m2 = tc_keys[TC_K_SEED2];
    for (size_t m = 0; m < nmeta; m++)
        tc_meta_absorb(&m1, &m2, meta[m]);
    md[0] = m1;
    md[1] = m2;
}

void tc_items_final_portable(size_t n, const uint64_t *in, const uint64_t *kb,
                             const uint64_t md[2], uint64_t *out)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t t1 = in[2 * i], t2 = in[2 * i + 1];
        if (kb) {
            t1 = tc_fmix(t1 ^ kb[0]);
            t2 = tc_fmix(t2 ^ kb[1]);
        }
        uint64_t s1 = t1 ^ md[0];
        uint64_t s2 = t2 ^ md[1];
        uint64_t d1 = tc_fmix(s1 + tc_rotl64(s2, 29));
        out[2 * i] = d1;
        out[2 * i + 1] = tc_fmix(s2 ^ d1);
    }
}

void tc_items1_portable(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                        const uint64_t md[2], uint64_t *out)
{
    /* block1_portable reads exactly `lanes` words: items of whole words in place,
     * others through a zero-padded copy of their last word. */
    size_t lanes = (bytes + 7) / 8, whole = bytes & ~(size_t)7;
    uint8_t buf[TC_HASH_STRIPE_BYTES];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = base + (ptrdiff_t)i * stride;
        if (whole != bytes) {
            memcpy(buf, p, bytes);
            memset(buf + bytes, 0, 8 * lanes - bytes);
            p = buf;
        }
        block1_portable(p, lanes, out + 2 * i);
        tc_items_final_portable(1, out + 2 * i, tc_block0_key, md, out + 2 * i);
    }
}

/* The reference of itemsN: each item's block digest by the definition (the
 * stripe loop over its whole stripes and its zero-padded last one, then the
 * block finish), its term and its finish. */
static void itemsN_portable(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                            const uint64_t md[2], uint64_t *out)
{
    size_t full = bytes / TC_HASH_STRIPE_BYTES, rest = bytes % TC_HASH_STRIPE_BYTES;
    uint8_t pad[TC_HASH_STRIPE_BYTES];
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = base + (ptrdiff_t)i * stride;
        uint64_t a[TC_HASH_LANES], c[TC_HASH_LANES];
        memcpy(a, tc_keys + TC_K_IV1, sizeof(a));
        memcpy(c, tc_keys + TC_K_IV2, sizeof(c));
        stripes_portable(p, full, 0, a, c);
        if (rest) {
            memcpy(pad, p + full * TC_HASH_STRIPE_BYTES, rest);
            memset(pad + rest, 0, TC_HASH_STRIPE_BYTES - rest);
            stripes_portable(pad, 1, full, a, c);
        }
        finish_portable(a, c, out + 2 * i);
        tc_items_final_portable(1, out + 2 * i, tc_block0_key, md, out + 2 * i);
    }
}

const tc_hash_kernels tc_kernels_portable = {
    TC_SIMD_PORTABLE, stripes_portable, finish_portable, tc_finish_v1_portable,
    block1_portable, NULL, tc_items_final_portable, tc_items1_portable, itemsN_portable,
};
