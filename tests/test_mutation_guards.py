"""Behaviours that a deliberate bug in the C core (tools/mutate.py) showed no other test
pinned exactly. Each test names the behaviour; the mutant it guards is in brackets.
"""
from __future__ import annotations

import struct

import pytest
import torch

from store_helpers import items_for, keys_for
from torchcache_c import hash_tensor
from torchcache_c._C import Store

HEADER = 128


@pytest.mark.parametrize("where", ["memory", "dir"])
def test_keys_sharing_their_first_word_in_one_put_are_each_stored(where, tmp_path):
    """[store-dedup-key0-only, store-find-key0-only] A batch's duplicate check and the
    index compare both key words."""
    store = Store(None if where == "memory" else str(tmp_path))
    keys = torch.tensor([[1, 1], [1, 2], [2, 1]], dtype=torch.int64)
    assert store.put(keys, torch.tensor([[5.0], [7.0], [9.0]])) == 3
    dest = torch.zeros(3, 1)
    assert store.gather(keys, dest) == b"\x01\x01\x01"
    assert dest.flatten().tolist() == [5.0, 7.0, 9.0]
    assert list(store.lookup(torch.tensor([[1, 3], [2, 2]]))) == [0, 0]


def test_an_index_holding_1024_keys_still_answers_a_miss():
    """[store-index-grow-late] The open-addressing index grows before it fills: a lookup of
    an absent key ends (with a full table it would probe forever)."""
    store = Store(None)
    keys = keys_for(range(1024))
    assert store.put(keys, items_for(keys, 1)) == 1024
    assert list(store.lookup(keys_for([5000]))) == [0]
    assert sum(store.lookup(keys)) == 1024


def _one_record(tmp_path, shape):
    keys = keys_for([7])
    with Store(str(tmp_path)) as store:
        store.put(keys, torch.arange(6, dtype=torch.float32).reshape(1, *shape))
    (seg,) = tmp_path.glob("seg-*.tcs")
    return keys, seg


@pytest.mark.parametrize("what, offset, value", [
    ("first key word", 8, struct.pack("<q", 12345)),    # [store-hsum-key0-dropped]
    ("shape (2, 3) -> (3, 2)", 64, struct.pack("<qq", 3, 2)),  # [store-hsum-shape-dropped]
])
def test_a_header_field_rewritten_on_disk_fails_its_checksum(tmp_path, what, offset, value):
    """Every header word outside the checksum itself is covered: a record whose key or
    shape is rewritten (consistently with the other checks) is dropped, not served."""
    keys, seg = _one_record(tmp_path, (2, 3))
    data = bytearray(seg.read_bytes())
    data[offset:offset + len(value)] = value
    seg.write_bytes(bytes(data))
    with Store(str(tmp_path), refresh_ms=0) as store:
        assert store.stats()["records"] == 0, what
        assert list(store.lookup(torch.cat([keys, torch.tensor([[12345, keys[0, 1]]])]))) \
            == [0, 0]
        report = store.verify()
        assert report["corrupt"] == 1
        assert report["problems"] == [(seg.name, 0, "header checksum mismatch")]


def test_a_tensor_with_the_most_dimensions_allowed_is_hashed():
    """[dlpack-ndim-boundary] 32 dimensions (the batch one included) are accepted, 33 are
    refused, and size-1 dimensions change the digest only through the shape."""
    x = torch.arange(6.0).reshape([2, 3] + [1] * 30)
    assert x.dim() == 32
    d = hash_tensor(x)
    assert d.shape == (2, 2)
    assert not torch.equal(d, hash_tensor(x.reshape(2, 3)))  # shape is in the digest
    with pytest.raises(ValueError, match="at most 32"):
        hash_tensor(x.unsqueeze(-1))


@pytest.mark.parametrize("payload, record", [(256, 128 + 256), (260, 128 + 320), (4, 128 + 64)])
def test_records_are_padded_to_the_next_64_bytes_and_no_further(tmp_path, payload, record):
    """[store-round-up] docs/format.md: a record is its 128-byte header and its payload
    padded to a multiple of 64; an aligned payload gets no padding."""
    keys = keys_for([1, 2])
    with Store(str(tmp_path)) as store:
        assert store.put(keys, torch.zeros(2, payload, dtype=torch.uint8)) == 2
        assert store.stats()["bytes_written"] == 2 * record
    (seg,) = tmp_path.glob("seg-*.tcs")
    assert seg.stat().st_size == 2 * record


@pytest.mark.parametrize("fields, problem", [
    # [store-raw-len-unchecked] raw_len (and stored_len) 32 for a (2, 3) float32 item
    ({32: 32, 40: 32}, "raw_len differs from shape x element size"),
    # [store-itemsize-subbyte] 12-bit elements, lengths consistent with 1 byte each
    ({24: 2 | 12 << 8 | 1 << 16, 32: 6, 40: 6},
     "dtype is not a whole number of bytes per element"),
])
def test_a_header_that_checks_but_contradicts_itself_is_refused(tmp_path, fields, problem):
    """A header with a valid checksum (crafted, or written by a buggy writer) is still
    refused when its fields disagree: it is never indexed, and verify names why."""
    from test_store_format import header_sum_v2

    keys, seg = _one_record(tmp_path, (2, 3))
    data = bytearray(seg.read_bytes())
    for offset, value in fields.items():
        data[offset:offset + 8] = struct.pack("<Q", value)
    data[56:64] = struct.pack("<Q", header_sum_v2(bytes(data[:HEADER]), seg.name, 0))
    seg.write_bytes(bytes(data))
    with Store(str(tmp_path), refresh_ms=0) as store:
        assert store.stats()["records"] == 0
        assert list(store.lookup(keys)) == [0]
        assert store.verify()["problems"] == [(seg.name, 0, problem)]


def test_strided_views_are_refused_where_the_store_needs_contiguous_rows():
    """[dlpack-contiguous-kept] The DLPack view reports a strided tensor as such, so the
    store refuses it (reading it as contiguous would store the wrong bytes)."""
    store = Store(None)
    keys = keys_for(range(3))
    src = torch.arange(12.0).reshape(4, 3).t()  # (3, 4), strided
    with pytest.raises(ValueError, match="contiguous"):
        store.put(keys, src)
    with pytest.raises(ValueError, match="contiguous"):
        store.put(keys_for(range(6)).t().contiguous().t(), torch.zeros(6, 1))
    assert store.put(keys, src.contiguous()) == 3
    dest = torch.zeros(4, 3).t()
    with pytest.raises(ValueError, match="contiguous"):
        store.gather(keys, dest)
