/* le_bytes.h -- little-endian words in byte buffers, whatever the host
 * (docs/format.md, section 3; docs/hash.md, section 3): one unaligned load or
 * store each through memcpy, byte-swapped on a big-endian host.  A byte loop
 * (v = v << 8 | p[i]) is not merged into one load by gcc 12 at -O3: it stayed
 * 24 instructions a word, which made decoding a record header ~340
 * instructions (2026-11-28, objdump of header_decode). */
#ifndef TC_LE_BYTES_H
#define TC_LE_BYTES_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define TC_LE_SWAP64(v) __builtin_bswap64(v)
#define TC_LE_SWAP32(v) __builtin_bswap32(v)
#else
#define TC_LE_SWAP64(v) (v)
#define TC_LE_SWAP32(v) (v)
#endif

static inline uint64_t tc_get_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return TC_LE_SWAP64(v);
}

static inline uint32_t tc_get_le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return TC_LE_SWAP32(v);
}

static inline void tc_put_le64(uint8_t *p, uint64_t v)
{
    v = TC_LE_SWAP64(v);
    memcpy(p, &v, sizeof(v));
}

static inline void tc_put_le32(uint8_t *p, uint32_t v)
{
    v = TC_LE_SWAP32(v);
    memcpy(p, &v, sizeof(v));
}

#endif
