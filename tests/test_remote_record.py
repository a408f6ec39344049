"""The C check of a record held in memory (issue 15): _C.parse_record verifies a record
fetched from an object store exactly as a reader of its segment file would
(docs/format.md, sections 4 and 6; docs/remote.md).  Needs no object-store client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchcache_c import _C


def _one_segment(tmp_path: Path, x: torch.Tensor, zstd=None):
    keys = torch.tensor([[1, 2], [3, -4]], dtype=torch.int64)
    with _C.Store(str(tmp_path / "d"), zstd_level=zstd) as st:
        st.put(keys, x)
    (seg,) = [p for p in (tmp_path / "d").iterdir() if p.name.startswith("seg-")]
    return seg.name, seg.read_bytes(), keys


@pytest.mark.parametrize("zstd", [None, 3])
def test_parse_record_reads_what_the_store_wrote(tmp_path, zstd):
    if zstd and not _C.build_info()["zstd"]:
        pytest.skip("libzstd is not available")
    x = torch.zeros(2, 300, dtype=torch.float32)
    x[1] = torch.arange(300.0)
    name, data, keys = _one_segment(tmp_path, x, zstd)
    k0, k1, word, shape, total, payload = _C.parse_record(data, name, 0)
    assert (k0, k1, shape) == (1, 2, (300,))
    assert payload == x[0].numpy().tobytes()
    k0, k1, word, shape, total2, payload = _C.parse_record(data, name, total, total)
    assert (k0, k1) == (3, -4) and payload == x[1].numpy().tobytes()
    assert total + total2 == len(data)
    # header only
    assert _C.parse_record(data, name, 0, payload=False)[5] is None


def test_parse_record_refuses_damage(tmp_path):
    x = torch.arange(600.0).reshape(2, 300)
    name, data, _ = _one_segment(tmp_path, x)
    total = _C.parse_record(data, name, 0)[4]
    # another segment name or offset: the header is bound to its place
    with pytest.raises(_C.StoreCorruptError, match="header checksum"):
        _C.parse_record(data, "seg-other-1-0000000000000000.tcs", 0)
    with pytest.raises(_C.StoreCorruptError, match="header checksum"):
        _C.parse_record(data[total:], name, 0)
    # truncated: inside the header, inside the payload
    for cut in (0, 64, 127, 128, total - 64 - 1):
        with pytest.raises(_C.StoreCorruptError, match="truncated"):
            _C.parse_record(data[:cut], name, 0)
    # one flipped bit in the payload, in the header
    for pos in (128 + 5, 20):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(_C.StoreCorruptError):
            _C.parse_record(bytes(bad), name, 0)
    # the payload flip is not seen without the payload check, the header flip is
    bad = bytearray(data)
    bad[128 + 5] ^= 0x10
    _C.parse_record(bytes(bad), name, 0, payload=False)
    with pytest.raises(ValueError):
        _C.parse_record(data, name, 0, len(data) + 1)
    assert _C.segment_id(name) == _C.segment_id(name) != _C.segment_id(name + "x")




ROOT = str(Path(__file__).resolve().parents[1])


def test_without_the_client_decoration_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['obstore'] = None\n"
            "from torchcache_c import torchcache\n"
            "try:\n    torchcache(persistent=True, persistent_remote='s3://b/p')\n"
            "except ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=120)
    assert 'ERR' in out.stdout and 'pip install "torchcache_c[remote]"' in out.stdout, out
