"""Regenerate tests/hash_vectors.json from the portable reference engine.

Run only when the hash definition changes (and then rename it: docs/hash.md,
section 9).  Every input is described by a rule, not stored, so another
implementation can rebuild it: byte k of the item stream is (k * 31 + seed) % 256,
masked to 0/1 for bool.
"""

import json
from pathlib import Path

import torch

from torchcache_c import _C, hash_tensor

DTYPES = {
    "uint8": torch.uint8, "int8": torch.int8, "bool": torch.bool, "int32": torch.int32,
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
    "float64": torch.float64, "complex64": torch.complex64, "int64": torch.int64,
    "float8_e4m3fn": torch.float8_e4m3fn,
}


def make_item(dtype: str, shape: list, seed: int) -> torch.Tensor:
    dt = DTYPES[dtype]
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * torch.empty((), dtype=dt).element_size()
    stream = (torch.arange(nbytes, dtype=torch.int64) * 31 + seed) % 256
    if dt is torch.bool:
        stream = stream & 1
    raw = stream.to(torch.uint8)
    return raw.view(dt).reshape(shape) if nbytes else torch.empty(shape, dtype=dt)


CASES = (
    [("uint8", [n], 1, None) for n in
     (0, 1, 7, 8, 9, 255, 256, 257, 1000, 16383, 16384, 16385, 32768, 50000, 100003)]
    # Items of 2 to 16 stripes (the kernels' itemsN): 2, 3, 15 and 16 stripes,
    # partial last stripes of 1, 44 and 255 bytes.
    + [("uint8", [n], 15, None) for n in (300, 511, 512, 513, 768, 3840, 4095, 4096)]
    + [
        ("float32", [3, 4], 5, None), ("float32", [4, 3], 5, None), ("int32", [3, 4], 5, None),
        ("float32", [12], 5, None), ("float32", [], 9, None), ("bool", [37], 2, None),
        ("bfloat16", [8, 8], 3, None), ("float16", [5, 7, 3], 4, None),
        ("float64", [1000], 6, None), ("complex64", [33], 7, None),
        ("int64", [2, 2, 2, 2], 8, None),
        ("float8_e4m3fn", [300], 11, None),
        ("float32", [3, 224, 224], 12, None),
        ("float32", [3, 224, 224], 12, 10000), ("float32", [1000], 13, 7),
        ("float32", [1000], 13, 1000), ("uint8", [5], 14, 2),
        ("float32", [96], 16, None), ("float32", [4, 28], 17, None),
    ]
)


def main() -> None:
    _C._set_simd("portable")
    vectors = []
    for dtype, shape, seed, sample in CASES:
        item = make_item(dtype, shape, seed)
        d = hash_tensor(item.unsqueeze(0), subsample_count=sample)[0]
        words = [int(v) & 0xFFFFFFFFFFFFFFFF for v in d.tolist()]
        vectors.append({
            "dtype": dtype, "shape": shape, "seed": seed, "subsample_count": sample,
            "digest": [f"{w:016x}" for w in words],
        })
    out = {
        "hash": "tch128-v2",
        "input_rule": "byte k of the item stream is (k * 31 + seed) % 256; & 1 for bool",
        "digest_words": "d1, d2 as 16 hex digits each (docs/hash.md, section 5)",
        "vectors": vectors,
    }
    Path(__file__).with_name("hash_vectors.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
