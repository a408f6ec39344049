"""A pure-Python reading of docs/hash.md, written from the document alone.

It loops over words (about 5 us a word, the key table cached), which is fast enough for
every test vector: it shows that the document, not just the C code, defines the digests.
"""
from functools import lru_cache

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
KEY_SEED = 0x7463683132387631
BLOCK = 16384
STRIPE = 256


def fmix64(z: int) -> int:
    z ^= z >> 33
    z = (z * 0xFF51AFD7ED558CCD) & M64
    z ^= z >> 33
    z = (z * 0xC4CEB9FE1A85EC53) & M64
    return z ^ (z >> 33)


@lru_cache(maxsize=None)
def key(i: int) -> int:
    z = (KEY_SEED + (i + 1) * GAMMA) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def _block_terms(block: bytes, b: int):
    a = [key(192 + j) for j in range(32)]
    c = [key(224 + j) for j in range(32)]
    nstripes = (len(block) + STRIPE - 1) // STRIPE
    padded = block + bytes(nstripes * STRIPE - len(block))
    for s in range(nstripes):
        for j in range(32):
            off = s * STRIPE + 8 * j
            w = int.from_bytes(padded[off:off + 8], "little")
            k1 = w ^ key(j) ^ key(64 + s)
            k2 = w ^ key(32 + j) ^ key(128 + s)
            a[j] = (a[j] + w + (k1 & 0xFFFFFFFF) * (k1 >> 32)) & M64
            c[j] = (c[j] + (k2 & 0xFFFFFFFF) * (k2 >> 32)) & M64
    h1 = sum(fmix64(a[j] ^ key(256 + j)) for j in range(32)) & M64
    h2 = sum(c[j] ^ key(288 + j) for j in range(32)) & M64
    t1 = fmix64(h1 ^ fmix64((b + key(320)) & M64))
    t2 = fmix64(h2 ^ fmix64((b + key(321)) & M64))
    return t1, t2


def digest(stream: bytes, *, dtype_word: int, shape, itemsize: int, sample_count: int = 0):
    """(d1, d2) of an item whose byte stream (already sampled, if sampling) is `stream`."""
    t1 = t2 = 0
    nblocks = (len(stream) + BLOCK - 1) // BLOCK
    for b in range(nblocks):
        u1, u2 = _block_terms(stream[b * BLOCK:(b + 1) * BLOCK], b)
        t1, t2 = (t1 + u1) & M64, (t2 + u2) & M64
    numel = 1
    for d in shape:
        numel *= d
    meta = [sample_count, dtype_word, numel * itemsize, nblocks, len(shape), *shape]
    m1, m2 = key(322), key(323)
    for m in meta:
        m1 = (fmix64(m1 ^ m) + GAMMA) & M64
        m2 = (fmix64(m2 ^ rotl(m, 32)) + GAMMA) & M64
    s1, s2 = t1 ^ m1, t2 ^ m2
    d1 = fmix64((s1 + rotl(s2, 29)) & M64)
    d2 = fmix64(s2 ^ d1)
    return d1, d2
