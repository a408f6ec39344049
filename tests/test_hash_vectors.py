"""tch128-v1 test vectors: every SIMD level, and a pure-Python reading of docs/hash.md."""

import json
from pathlib import Path

import pytest
import torch

from hash_spec import digest as spec_digest
from hash_vectors_gen import make_item
from torchcache_c import hash_tensor

VECTORS = json.loads(Path(__file__).with_name("hash_vectors.json").read_text())["vectors"]


def _words(d: torch.Tensor):
    return [f"{int(v) & 0xFFFFFFFFFFFFFFFF:016x}" for v in d.tolist()]


def _case_id(v):
    return f"{v['dtype']}{v['shape']}s{v['subsample_count']}"


@pytest.mark.parametrize("vector", VECTORS, ids=_case_id)
def test_every_simd_level_matches_the_vectors(simd, vector):
    item = make_item(vector["dtype"], vector["shape"], vector["seed"])
    got = hash_tensor(item.unsqueeze(0), subsample_count=vector["subsample_count"])[0]
    assert _words(got) == vector["digest"]


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS if v["subsample_count"] is None and
     torch.Size(v["shape"]).numel() * 8 <= 120_000],
    ids=_case_id,
)
def test_document_alone_defines_the_digest(vector):
    item = make_item(vector["dtype"], vector["shape"], vector["seed"])
    raw = item.reshape(-1).view(torch.uint8) if item.numel() else torch.empty(0, dtype=torch.uint8)
    dlpack_codes = {torch.uint8: (1, 8), torch.int8: (0, 8), torch.bool: (6, 8),
                    torch.int32: (0, 32), torch.float32: (2, 32), torch.bfloat16: (4, 16),
                    torch.float16: (2, 16), torch.float64: (2, 64), torch.complex64: (5, 64),
                    torch.int64: (0, 64), torch.float8_e4m3fn: (10, 8)}
    code, bits = dlpack_codes[item.dtype]
    d1, d2 = spec_digest(bytes(raw.tolist()), dtype_word=code | bits << 8 | 1 << 16,
                         shape=vector["shape"], itemsize=item.element_size())
    assert [f"{d1:016x}", f"{d2:016x}"] == vector["digest"]
