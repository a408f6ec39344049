"""Writes the seed corpora of the fuzzers: fuzz/corpus/segment/ (small valid
segments written by the real store, a torn tail, a bit flip, garbage between
records) and fuzz/corpus/hash/ (layout control bytes followed by element bytes,
see fuzz/fuzz_hash.c).  Deterministic; run from the repository root:

    python fuzz/make_corpus.py
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

import torch

from torchcache_c import build_info
from torchcache_c._C import Store

OUT = Path(__file__).parent / "corpus"
# fuzz/fuzz_segment.c reads every input under this name; version 2 records are
# bound to their segment's name (docs/format.md, section 4).
FUZZ_SEGMENT = "seg-fuzz-1-0000000000000000.tcs"
V1_FIXTURE = Path(__file__).parent.parent / "tests" / "data" / "segment-v1"
M64 = (1 << 64) - 1


def fmix64(z: int) -> int:
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & M64
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & M64
    return z ^ (z >> 33)


def segment_id(name: str) -> int:
    h = 0xCBF29CE484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return fmix64(h)


def rebind(data: bytes, name: str = FUZZ_SEGMENT) -> bytes:
    """The segment's version 2 records with header_sum recomputed for `name`
    (docs/format.md, section 4), as if a writer of that name had written them."""
    out = bytearray(data)
    off = 0
    while off + 128 <= len(out):
        words = list(struct.unpack_from("<16Q", out, off))
        words[7] = 0
        a = fmix64(0x74637368647232 ^ segment_id(name)) ^ off
        for w in words:
            a = (fmix64(a ^ w) + 0x9E3779B97F4A7C15) & M64
        struct.pack_into("<Q", out, off + 56, a)
        off += 128 + (words[5] + 63) // 64 * 64
    return bytes(out)


def segment_bytes(batches, zstd_level=None) -> bytes:
    """The one segment file a store writes for these (keys, items) batches."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp, zstd_level=zstd_level)
        for keys, items in batches:
            store.put(keys, items)
        store.close()
        (seg,) = Path(tmp).glob("seg-*.tcs")
        return rebind(seg.read_bytes())


def keys(first: int, n: int) -> torch.Tensor:
    ids = torch.arange(first, first + n, dtype=torch.int64)
    return torch.stack([ids * 0x9E3779B1, ids + 7], dim=1).contiguous()


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    seg_dir, hash_dir = OUT / "segment", OUT / "hash"
    seg_dir.mkdir(parents=True)
    hash_dir.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    seeds = {
        "f32_rows": [(keys(0, 4), torch.randn(4, 10, generator=g))],
        "u8_scalars": [(keys(10, 6), torch.arange(6, dtype=torch.uint8))],
        "mixed_shapes": [(keys(20, 2), torch.randn(2, 3, 5, generator=g)),
                         (keys(30, 3), torch.ones(3, 0, dtype=torch.int16)),
                         (keys(40, 1), torch.randn(1, 1, 1, 1, 1, 1, 1, 1, 2, generator=g))],
        "bf16_and_c64": [(keys(50, 2), torch.randn(2, 17, generator=g).bfloat16()),
                         (keys(60, 2), torch.randn(2, 3, dtype=torch.complex64, generator=g))],
        "two_blocks": [(keys(70, 1), torch.randn(1, 4200, generator=g))],
    }
    if build_info()["zstd"]:
        seeds["zstd"] = [(keys(80, 3), torch.zeros(3, 300))]
    for name, batches in seeds.items():
        level = 3 if name == "zstd" else None
        (seg_dir / name).write_bytes(segment_bytes(batches, level))
    whole = segment_bytes(seeds["f32_rows"])
    (seg_dir / "torn_tail").write_bytes(whole[:-70])
    flipped = bytearray(whole)
    flipped[128 + 9] ^= 0x10
    (seg_dir / "payload_bit_flip").write_bytes(bytes(flipped))
    header_flip = bytearray(whole)
    header_flip[8] ^= 1
    (seg_dir / "header_bit_flip").write_bytes(bytes(header_flip))
    rec = len(whole) // 4
    (seg_dir / "garbage_between").write_bytes(whole[:rec] + b"\xab" * 192 + whole[rec:])
    (v1,) = V1_FIXTURE.glob("seg-*.tcs")  # version 1 records are still read
    (seg_dir / "v1_rows").write_bytes(v1.read_bytes())

    # fuzz_hash.c: size selector, ndim, order, extra (broadcast/pad bits),
    # shape bytes, sample count (2 bytes), then element bytes.
    hash_seeds = {
        "compact_2d": bytes([2, 2, 0, 0, 4, 8, 0, 0]) + bytes(range(128)),
        "transposed_3d": bytes([3, 3, 6, 0, 3, 4, 5, 0, 0]) + bytes(range(200)),
        "broadcast_pad": bytes([1, 3, 1, 0x21, 2, 7, 8, 0, 0]) + bytes(range(64)),
        "sampled": bytes([0, 2, 0, 0, 8, 8, 5, 0]) + bytes(range(64)),
        "scalar": bytes([4, 0, 0, 0, 0, 0]) + b"0123456789abcdef",
        "odd_itemsize": bytes([5, 1, 0, 0x10, 7, 1, 0]) + bytes(range(32)),
        # Items of 2 to 16 stripes (the kernels' itemsN): 300 B (a partial last
        # stripe ending in a partial word), 4 KiB (16 stripes), 1029 B (3-byte
        # elements, 4 stripes and 5 bytes); compact, row-major (order 10 and 58
        # keep the dimensions in place).
        "multi_stripe_300": bytes([2, 3, 10, 0, 5, 5, 3, 0, 0]) + bytes(range(120)),
        "multi_stripe_16": bytes([4, 4, 58, 0, 4, 4, 4, 4, 0, 0]) + bytes(range(256)),
        "multi_stripe_odd": bytes([5, 3, 10, 0, 7, 7, 7, 0, 0]) + bytes(range(77)),
    }
    for name, data in hash_seeds.items():
        (hash_dir / name).write_bytes(data)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(seeds) + 5} segment and {len(hash_seeds)} hash seeds, {total} bytes")


if __name__ == "__main__":
    main()
