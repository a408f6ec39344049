"""tch128-v2 test vectors: every SIMD level, and a pure-Python reading of docs/hash.md."""

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


def _spec_stream(item: torch.Tensor, sample):
    """The byte stream and metadata word 1 of docs/hash.md sections 2 and 6, in Python."""
    flat = item.reshape(-1)
    numel = flat.numel()
    if sample is not None and 0 < sample < numel:
        # section 6: elements floor(i * numel / N), exact in Python's integers
        flat = flat[torch.tensor([i * numel // sample for i in range(sample)], dtype=torch.long)]
    else:
        sample = 0  # N >= numel is the full-content digest
    raw = flat.contiguous().view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
    return raw.numpy().tobytes(), sample


@pytest.mark.parametrize("vector", VECTORS, ids=_case_id)
def test_document_alone_defines_the_digest(vector):
    """Every vector, sampled ones included, through the pure-Python reading of the spec."""
    item = make_item(vector["dtype"], vector["shape"], vector["seed"])
    dlpack_codes = {torch.uint8: (1, 8), torch.int8: (0, 8), torch.bool: (6, 8),
                    torch.int32: (0, 32), torch.float32: (2, 32), torch.bfloat16: (4, 16),
                    torch.float16: (2, 16), torch.float64: (2, 64), torch.complex64: (5, 64),
                    torch.int64: (0, 64), torch.float8_e4m3fn: (10, 8)}
    code, bits = dlpack_codes[item.dtype]
    stream, sample_count = _spec_stream(item, vector["subsample_count"])
    d1, d2 = spec_digest(stream, dtype_word=code | bits << 8 | 1 << 16,
                         shape=vector["shape"], itemsize=item.element_size(),
                         sample_count=sample_count)
    assert [f"{d1:016x}", f"{d2:016x}"] == vector["digest"]


def test_spec_reading_covers_every_vector_and_each_sampling_rule():
    """The vector set keeps the cases the Python reading must explain: sampled (N < numel),
    N == numel (full content), several blocks, and a 0-d and an empty item."""
    kinds = {(v["subsample_count"] is not None
              and v["subsample_count"] < torch.Size(v["shape"]).numel()) for v in VECTORS}
    assert kinds == {True, False}
    assert any(v["subsample_count"] == torch.Size(v["shape"]).numel() for v in VECTORS)
    assert any(torch.Size(v["shape"]).numel() * 4 > 3 * 16384 for v in VECTORS)
    assert any(v["shape"] == [] for v in VECTORS) and any(v["shape"] == [0] for v in VECTORS)
