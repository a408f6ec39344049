/* hash_internal.h -- what the tch128-v2 kernels (hash_portable.c and one file per
 * instruction set) share with the item driver (hash.c, hash_batch.c) and the
 * dispatcher (hash_dispatch.c).  Not installed, not part of any interface.
 *
 * Every kernel of every level must give exactly the results of the portable one
 * (tests/test_hash_vectors.py, tests/test_hash_dispatch.py and fuzz/fuzz_hash.c
 * check). */
#ifndef TC_HASH_INTERNAL_H
#define TC_HASH_INTERNAL_H

#include "hash.h"

#include <string.h>

#define TC_GAMMA 0x9E3779B97F4A7C15ULL

/* Key layout (docs/hash.md, section 2): key(i) for i in these ranges. */
#define TC_K_LANE1 0
#define TC_K_LANE2 32
#define TC_K_STRIPE1 64
#define TC_K_STRIPE2 128
#define TC_K_IV1 192
#define TC_K_IV2 224
#define TC_K_FIN1 256
#define TC_K_FIN2 288
#define TC_K_BLOCK1 320
#define TC_K_BLOCK2 321
#define TC_K_SEED1 322
#define TC_K_SEED2 323
#define TC_K_COUNT 324

/* Filled once by tc_hash_tables_init() (hash_portable.c), read-only after. */
extern uint64_t tc_keys[TC_K_COUNT];
/* tc_lane_tail[L] = the (h1, h2) contributions of lanes L..31 of a block of one
 * stripe in which those lanes read only zero padding: such a lane's
 * accumulators depend on the keys alone, so its share of the (v2) block finish
 * is a constant (docs/hash.md, section 4). */
extern uint64_t tc_lane_tail[TC_HASH_LANES + 1][2];
/* fmix64(0 + CB1), fmix64(0 + CB2): block 0's term keys. */
extern uint64_t tc_block0_key[2];
void tc_hash_tables_init(void);

/* The kernels of one SIMD level.  hash.c and hash_batch.c call only these (through
 * tc_hash_kernels_active()) and never name an instruction set. */
typedef struct {
    int level;
    /* Absorbs `nstripes` whole stripes starting at stripe index `s0` of the block
     * into the lane accumulators a[32] and c[32]. */
    void (*stripes)(const uint8_t *p, size_t nstripes, size_t s0, uint64_t a[TC_HASH_LANES],
                    uint64_t c[TC_HASH_LANES]);
    /* Reduces the lane accumulators to the block digest (h1, h2) of tch128-v2. */
    void (*finish)(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                   uint64_t h[2]);
    /* The same with tch128-v1's block finish: only tc_hash_block, the store's
     * payload checksum (docs/format.md), uses it, so that stores written before
     * v2 still verify. */
    void (*finish_v1)(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                      uint64_t h[2]);
    /* Block digest of a block of one stripe (at most 256 bytes): `stripe` holds
     * that stripe's first `lanes` words, zero-padded up to a multiple of eight
     * words; the lanes after those are added from tc_lane_tail. */
    void (*block1)(const uint8_t *stripe, size_t lanes, uint64_t h[2]);
    /* Block digest (h1, h2) of a short block: `full` whole stripes at p, then, if
     * `last` is not NULL, one more (zero-padded) stripe at `last`; at most
     * TC_SHORT_BLOCK_STRIPES stripes in all.  NULL where the level has nothing
     * better than stripes + finish. */
    void (*short_block)(const uint8_t *p, size_t full, const uint8_t *last, uint64_t h[2]);
    /* Finishes n items (docs/hash.md, section 5).  in[2i], in[2i+1] are item i's
     * term sums (T1, T2), or, when kb is not NULL, the digest (h1, h2) of its only
     * block, whose term fmix64(h ^ kb[k]) is formed first.  md[0], md[1] are the
     * metadata digest (M1, M2), the same for every item (tc_meta_digest).
     * Writes out[2i], out[2i+1]; out may be in. */
    void (*items_final)(size_t n, const uint64_t *in, const uint64_t *kb, const uint64_t md[2],
                        uint64_t *out);
    /* Full digests of n items of one stripe each (docs/hash.md, sections 4 and 5):
     * the block digest of every item, its term and its finish in one pass, so that
     * a SIMD level can finish several items side by side.  Item i is the `bytes`
     * bytes (1 <= bytes <= TC_HASH_STRIPE_BYTES) at base + i * stride (any stride,
     * 0 included), read in place: no byte outside them is read, the zero padding
     * is in registers.  md is the metadata digest.  Writes out[2i], out[2i+1]. */
    void (*items1)(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                   const uint64_t md[2], uint64_t *out);
    /* Full digests of n items of `bytes` bytes each, one block of 2 to
     * TC_SHORT_BLOCK_STRIPES stripes (TC_HASH_STRIPE_BYTES < bytes <=
     * TC_SHORT_BLOCK_STRIPES * TC_HASH_STRIPE_BYTES): the block digest, its term
     * and the item finish in one pass, as items1.  Item i is the `bytes` bytes at
     * base + i * stride (any stride, 0 included), read in place: no byte outside
     * them is read, a partial last stripe is zero-padded in registers.  md is the
     * metadata digest.  Writes out[2i], out[2i+1]. */
    void (*itemsN)(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                   const uint64_t md[2], uint64_t *out);
} tc_hash_kernels;

/* Blocks of at most this many stripes (4 KiB) may take short_block, and items
 * of one such block itemsN. */
#define TC_SHORT_BLOCK_STRIPES 16

extern const tc_hash_kernels tc_kernels_portable;
#if defined(__x86_64__) || defined(_M_X64)
#define TC_HAVE_X86_VARIANTS 1
extern const tc_hash_kernels tc_kernels_avx2;
extern const tc_hash_kernels tc_kernels_avx512;
/* Shared by the AVX-512 table (hash_avx2.c). */
void tc_block1_avx2(const uint8_t *stripe, size_t lanes, uint64_t h[2]);
void tc_short_block_avx2(const uint8_t *p, size_t full, const uint8_t *last, uint64_t h[2]);
void tc_items_final_avx2(size_t n, const uint64_t *in, const uint64_t *kb, const uint64_t md[2],
                         uint64_t *out);
#endif

/* The kernels in use (hash_dispatch.c); one atomic load.  A caller loads them
 * once per batch: every level gives the same digests, so a switch while a batch
 * runs changes nothing but speed. */
const tc_hash_kernels *tc_hash_kernels_active(void);

/* The item driver's pieces that hash_batch.c shares (hash.c). */
/* Block digest of n bytes, 0 < n <= TC_HASH_BLOCK_BYTES, with kernels k. */
void tc_block_digest(const tc_hash_kernels *k, const uint8_t *p, size_t n, uint64_t h[2]);
/* An item's metadata words (docs/hash.md, section 5) into meta; returns their
 * count, at most TC_HASH_META_MAX (items have at most 64 dimensions). */
#define TC_HASH_META_MAX (5 + 64)
size_t tc_item_meta(const tc_item *item, uint64_t sample_count, uint64_t nblocks,
                    uint64_t *meta);
/* The sample count that defines the digest (docs/hash.md, section 6): 0 when
 * sample_count >= numel.  The one place that rule is written; tc_hash_item and
 * tc_hash_batch both ask it. */
uint64_t tc_effective_sample_count(uint64_t sample_count, uint64_t numel);
/* The metadata digest (M1, M2) of docs/hash.md, section 5: the same for every
 * item of a batch, so a batch forms it once. */
void tc_meta_digest(const uint64_t *meta, size_t nmeta, uint64_t md[2]);

/* The portable scalar pieces, for the SIMD files' remainders. */
void tc_items_final_portable(size_t n, const uint64_t *in, const uint64_t *kb,
                             const uint64_t md[2], uint64_t *out);
void tc_items1_portable(const uint8_t *base, ptrdiff_t stride, size_t n, size_t bytes,
                        const uint64_t md[2], uint64_t *out);
void tc_finish_v1_portable(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                           uint64_t h[2]);

static inline uint64_t tc_rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

/* docs/hash.md, section 2: the 64-bit finalizer of MurmurHash3 (tc_fmix64 is the
 * same, out of line, for the other engines). */
static inline uint64_t tc_fmix(uint64_t z)
{
    z ^= z >> 33;
    z *= 0xff51afd7ed558ccdULL;
    z ^= z >> 33;
    z *= 0xc4ceb9fe1a85ec53ULL;
    z ^= z >> 33;
    return z;
}

/* One lane's share of the tch128-v2 block finish (docs/hash.md, section 4),
 * added to h1, h2: one fmix64, for the accumulator that holds every data bit. */
static inline void tc_lane_finish(uint64_t a, uint64_t c, int j, uint64_t *h1, uint64_t *h2)
{
    *h1 += tc_fmix(a ^ tc_keys[TC_K_FIN1 + j]);
    *h2 += c ^ tc_keys[TC_K_FIN2 + j];
}

/* The same with tch128-v1's block finish (two fmix64 per accumulator), which the
 * store's payload checksum keeps (docs/format.md). */
static inline void tc_lane_finish_v1(uint64_t a, uint64_t c, int j, uint64_t *h1, uint64_t *h2)
{
    *h1 += tc_fmix(a + tc_fmix(c ^ tc_keys[TC_K_FIN1 + j]));
    *h2 += tc_fmix(c + tc_fmix(a ^ tc_keys[TC_K_FIN2 + j]));
}

/* dst[0..255] = the n < 256 bytes at src, zero-padded: a partial stripe.
 * Through the C library's memcpy and memset, called: inlined with a variable
 * length, gcc -O3 expands them to `rep movsq` / `rep stosq`, whose start-up cost
 * was most of the time of a 300-byte item on the Zen 3 core of docs/hash.md,
 * section 9.  Constant pointers, read as volatile so that the calls stay calls. */
extern void *(*const volatile tc_memcpy_fn)(void *, const void *, size_t);
extern void *(*const volatile tc_memset_fn)(void *, int, size_t);
static inline void tc_pad_stripe(uint8_t *dst, const uint8_t *src, size_t n)
{
    tc_memcpy_fn(dst, src, n);
    tc_memset_fn(dst + n, 0, TC_HASH_STRIPE_BYTES - n);
}

/* One step of the metadata digest (docs/hash.md, section 5). */
static inline void tc_meta_absorb(uint64_t *s1, uint64_t *s2, uint64_t m)
{
    *s1 = tc_fmix(*s1 ^ m) + TC_GAMMA;
    *s2 = tc_fmix(*s2 ^ tc_rotl64(m, 32)) + TC_GAMMA;
}

#endif
