"""Inputs that crashed fuzz/fuzz_segment.c, replayed through the Python Store API.

Each file under fuzz/regressions/ named segment-* is a fuzzer input: the bytes
of one segment file.  They are read the ways the harness reads them (whole at
open; first half at open and then rewritten in place by the second half) and
must never crash the process nor serve bytes that no record of the file holds.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from torchcache_c._C import Store

REGRESSIONS = sorted((Path(__file__).parents[1] / "fuzz" / "regressions").glob("segment-*"))
SEGMENT = "seg-fuzz-1-0000000000000000.tcs"
HEADER = 128
# torch dtype of each (DLPack code, bits) a record may name.
DTYPES = {(0, 8): torch.int8, (0, 16): torch.int16, (0, 32): torch.int32, (0, 64): torch.int64,
          (1, 8): torch.uint8, (2, 16): torch.float16, (2, 32): torch.float32,
          (2, 64): torch.float64, (4, 16): torch.bfloat16, (5, 64): torch.complex64,
          (5, 128): torch.complex128, (6, 8): torch.bool}


def candidate_keys(data: bytes) -> torch.Tensor:
    """The key fields of every 64-byte boundary, as the harness takes them."""
    keys = [struct.unpack_from("<qq", data, off + 8) for off in range(0, len(data) - 23, 64)]
    return torch.tensor(keys or [(0, 0)], dtype=torch.int64).reshape(-1, 2)


def payloads_with_key(data: bytes, k0: int, k1: int) -> list:
    """Payload bytes (uncompressed, whole) of every header in data with this key."""
    out = []
    for off in range(0, len(data) - HEADER + 1, 64):
        if data[off:off + 4] != b"TCR1" or struct.unpack_from("<qq", data, off + 8) != (k0, k1):
            continue
        flags, raw, stored = data[off + 7], *struct.unpack_from("<QQ", data, off + 32)
        if not flags & 1 and off + HEADER + stored <= len(data):
            out.append(data[off + HEADER:off + HEADER + raw])
    return out


def read_every_key(store: Store, data: bytes, check: bool) -> None:
    keys = candidate_keys(data)
    for i, hit in enumerate(store.lookup(keys)):
        if not hit:
            continue
        try:
            dtype_word, shape = store.entry_info(keys, i)
        except KeyError:
            continue
        dtype = DTYPES.get((dtype_word & 0xFF, (dtype_word >> 8) & 0xFF))
        if dtype is None or (dtype_word >> 16) != 1:
            continue
        dest = torch.zeros((1, *shape), dtype=dtype)
        if store.gather(keys[i:i + 1].contiguous(), dest) != b"\x01":
            continue  # dropped as corrupt, or not decompressible: not served
        served = dest.view(torch.uint8).numpy().tobytes() if dest.numel() else b""
        if check:
            k0, k1 = keys[i].tolist()
            candidates = payloads_with_key(data, k0, k1)
            assert not candidates or served in candidates, f"key {k0, k1}: served bytes " \
                "that no record of the file holds"


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_fuzz_regression_input_is_read_safely(path, tmp_path):
    data = path.read_bytes()
    cache = tmp_path / "whole"
    cache.mkdir()
    (cache / SEGMENT).write_bytes(data)
    with Store(str(cache), refresh_ms=0) as store:
        read_every_key(store, data, check=True)
        store.verify()
        read_every_key(store, data, check=True)

    # Rewritten in place under an open store (docs/format.md, section 8 says
    # not to): whatever is served, memory must stay safe.
    half = len(data) // 2
    cache = tmp_path / "rewritten"
    cache.mkdir()
    seg = cache / SEGMENT
    seg.write_bytes(data[:half])
    with Store(str(cache), refresh_ms=0) as store:
        read_every_key(store, data[:half], check=True)
        with open(seg, "r+b") as f:
            f.write(data[half:])
        read_every_key(store, data[half:], check=False)
        store.verify()


def test_a_verified_record_whose_header_is_rewritten_is_dropped_not_overrun(tmp_path):
    """fuzz/regressions/segment-verified-header-rewritten-raw_len: raw_len grown
    to 1 MiB in place after the record verified made gather copy 1 MiB into a
    16-byte row."""
    keys = torch.tensor([[11, 22]], dtype=torch.int64)
    with Store(str(tmp_path)) as store:
        store.put(keys, torch.arange(4, dtype=torch.float32).reshape(1, 4))
    (seg,) = tmp_path.glob("seg-*.tcs")
    with Store(str(tmp_path), refresh_ms=0) as store:
        dest = torch.zeros(1, 4)
        store.gather(keys, dest)  # verifies the record
        with open(seg, "r+b") as f:
            f.seek(32)
            f.write(struct.pack("<Q", 1 << 20))
        assert store.gather(keys, dest) == b"\x00"
        assert "changed on disk" in store.take_faults()["changed"]
        assert list(store.lookup(keys)) == [0]


# What each regression input must give, exactly: the records a store indexes from the whole
# file and the bytes it serves for each key, what verify() reports, and, for the file written
# half first and rewritten in place under an open store, what the second read serves and the
# fault it counts. A new file under fuzz/regressions/ needs its line here.
_ARANGE4 = torch.arange(4, dtype=torch.float32).numpy().tobytes()
EXPECTED = {
    "segment-verified-header-rewritten-raw_len": dict(
        records=1, served={(11, 22): _ARANGE4},
        verify=dict(records=1, corrupt=1, problems=[(SEGMENT, 192, "header checksum mismatch")]),
        half_served={(11, 22): _ARANGE4}, rewritten_served={(11, 22): None},
        rewritten_faults={"changed"},
        rewritten_verify=dict(records=0, corrupt=1,
                              problems=[(SEGMENT, 0, "header checksum mismatch")]),
    ),
}


def _served(store: Store, wanted: dict) -> dict:
    out = {}
    for (k0, k1), payload in wanted.items():
        keys = torch.tensor([[k0, k1]], dtype=torch.int64)
        dest = torch.zeros(1, len(payload or _ARANGE4) // 4)
        out[(k0, k1)] = (dest.numpy().tobytes() if store.gather(keys, dest) == b"\x01"
                         else None)
    return out


def _verify(store: Store) -> dict:
    report = store.verify()
    return {k: report[k] for k in ("records", "corrupt", "problems")}


def test_every_regression_input_has_its_expected_outcome():
    assert sorted(p.name for p in REGRESSIONS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_fuzz_regression_input_gives_its_expected_outcome(path, tmp_path):
    want = EXPECTED[path.name]
    data = path.read_bytes()
    (tmp_path / "whole").mkdir()
    (tmp_path / "whole" / SEGMENT).write_bytes(data)
    with Store(str(tmp_path / "whole"), refresh_ms=0) as store:
        assert store.stats()["records"] == want["records"]
        assert _served(store, want["served"]) == want["served"]
        assert _verify(store) == want["verify"]
        assert _served(store, want["served"]) == want["served"]  # still, after verify

    half = len(data) // 2
    (tmp_path / "rewritten").mkdir()
    seg = tmp_path / "rewritten" / SEGMENT
    seg.write_bytes(data[:half])
    with Store(str(tmp_path / "rewritten"), refresh_ms=0) as store:
        assert _served(store, want["half_served"]) == want["half_served"]
        with open(seg, "r+b") as f:
            f.write(data[half:])
        assert _served(store, want["rewritten_served"]) == want["rewritten_served"]
        assert set(store.take_faults()) == want["rewritten_faults"]
        assert _verify(store) == want["rewritten_verify"]
