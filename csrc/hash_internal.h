/* hash_internal.h -- what the SIMD variants of the stripe loop share with hash.c.
 * Not installed, not part of any interface. */
#ifndef TC_HASH_INTERNAL_H
#define TC_HASH_INTERNAL_H

#include "hash.h"

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

extern uint64_t tc_keys[TC_K_COUNT];

/* Absorbs `nstripes` whole stripes starting at stripe index `s0` of the block
 * into the lane accumulators a[32] and c[32]. */
typedef void (*tc_stripes_fn)(const uint8_t *p, size_t nstripes, size_t s0,
                              uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES]);

void tc_stripes_portable(const uint8_t *p, size_t nstripes, size_t s0,
                         uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES]);
#if defined(__x86_64__) || defined(_M_X64)
void tc_stripes_avx2(const uint8_t *p, size_t nstripes, size_t s0,
                     uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES]);
void tc_stripes_avx512(const uint8_t *p, size_t nstripes, size_t s0,
                       uint64_t a[TC_HASH_LANES], uint64_t c[TC_HASH_LANES]);
#define TC_HAVE_X86_VARIANTS 1
#endif

/* Reduces the lane accumulators to the block digest (h1, h2). */
typedef void (*tc_finish_fn)(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                             uint64_t h[2]);

void tc_finish_portable(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                        uint64_t h[2]);
#ifdef TC_HAVE_X86_VARIANTS
void tc_finish_avx512(const uint64_t a[TC_HASH_LANES], const uint64_t c[TC_HASH_LANES],
                      uint64_t h[2]);
#endif

extern tc_stripes_fn tc_stripes_active;
extern tc_finish_fn tc_finish_active;

#endif
