"""Format version 2 (docs/format.md, sections 3-4): records bound to their
segment and offset, version 1 directories still read, bytes on disk
little-endian whatever the host."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import torch

from torchcache_c._C import Store

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import check_served, items_for, keys_for  # noqa: E402

V1_FIXTURE = Path(__file__).parent / "data" / "segment-v1"
RECORD_HEADER = 128
M64 = (1 << 64) - 1


def segments(path) -> list:
    return sorted(Path(path).glob("seg-*.tcs"))


def fmix64(z: int) -> int:
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & M64
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & M64
    return z ^ (z >> 33)


def segment_id(name: str) -> int:
    """docs/format.md, section 4: FNV-1a 64 of the file name, then fmix64."""
    h = 0xCBF29CE484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    return fmix64(h)


def header_sum_v2(header: bytes, name: str, offset: int) -> int:
    words = list(struct.unpack("<16Q", header))
    words[7] = 0
    a = fmix64(0x74637368647232 ^ segment_id(name)) ^ offset
    for w in words:
        a = (fmix64(a ^ w) + 0x9E3779B97F4A7C15) & M64
    return a


def test_written_headers_are_version_2_bound_to_segment_and_offset(tmp_path):
    with Store(str(tmp_path)) as s:
        keys = keys_for(range(3))
        s.put(keys, items_for(keys, 16))
    (seg,) = segments(tmp_path)
    data = seg.read_bytes()
    record = RECORD_HEADER + 16 * 8
    for i in range(3):
        header = data[i * record:i * record + RECORD_HEADER]
        magic, version = struct.unpack_from("<IH", header)
        assert (magic, version) == (0x31524354, 2)
        assert struct.unpack_from("<Q", header, 56)[0] == header_sum_v2(header, seg.name,
                                                                        i * record)


def test_segment_copied_under_another_name_never_verifies(tmp_path):
    keys = keys_for(range(4))
    with Store(str(tmp_path / "a")) as s:
        s.put(keys, items_for(keys, 16))
    (seg,) = segments(tmp_path / "a")
    (tmp_path / "same").mkdir()
    shutil.copy(seg, tmp_path / "same" / seg.name)
    assert check_served(Store(str(tmp_path / "same")), keys, 16) == 4
    (tmp_path / "other").mkdir()
    shutil.copy(seg, tmp_path / "other" / "seg-elsewhere-1-0000000000000002.tcs")
    other = Store(str(tmp_path / "other"))
    assert list(other.lookup(keys)) == [0, 0, 0, 0]
    assert other.verify()["records"] == 0


def test_record_embedded_in_another_records_payload_is_never_indexed(tmp_path):
    # LevelDB's log format rules this out; version 1 indexed and served the inner
    # key once the outer header was damaged and resync walked into its payload.
    inner_key = keys_for([7])
    with Store(str(tmp_path / "inner")) as s:
        s.put(inner_key, items_for(inner_key, 16))
    (inner_seg,) = segments(tmp_path / "inner")
    inner = inner_seg.read_bytes()
    outer_key = keys_for([8])
    payload = torch.frombuffer(bytearray(inner * 2), dtype=torch.uint8).reshape(1, -1)
    with Store(str(tmp_path / "outer")) as s:
        s.put(outer_key, payload.clone())
    (outer_seg,) = segments(tmp_path / "outer")
    data = bytearray(outer_seg.read_bytes())
    data[20] ^= 0x01  # the outer header no longer checks: resync walks its payload
    outer_seg.write_bytes(bytes(data))
    store = Store(str(tmp_path / "outer"))
    assert list(store.lookup(torch.cat([outer_key, inner_key]))) == [0, 0]
    assert store.verify()["records"] == 0


def test_version_1_directory_is_still_read_and_written_to(tmp_path):
    shutil.copytree(V1_FIXTURE, tmp_path / "v1")
    (seg,) = segments(tmp_path / "v1")
    assert struct.unpack_from("<H", seg.read_bytes(), 4)[0] == 1
    store = Store(str(tmp_path / "v1"))
    keys = keys_for(range(8))
    assert check_served(store, keys, 16) == 8
    new = keys_for(range(8, 12))
    assert store.put(new, items_for(new, 16)) == 4  # version 2 records beside them
    fresh = Store(str(tmp_path / "v1"))
    assert check_served(fresh, torch.cat([keys, new]), 16) == 12
    assert fresh.verify()["corrupt"] == 0
