"""The one-C-call path of a cached call (csrc/call.c, _C.call_fetch / call_put).

Its item keys must be bit for bit the keys of the documented definition
(hash_tensor(stack([ctx, d_1, ..., d_k], 1)) XOR the leaf constant), so that stores
written before it keep hitting; its hit/miss split and gathered rows must equal what
the store holds; and whatever it cannot read is left to the step-by-step path.
"""
import hashlib
import pathlib

import pytest
import torch
import torch.nn as nn

from torchcache_c import _C, hash_tensor, torchcache
from torchcache_c.cache import _dtype_from_word, _leaf_constants, _StoreHandle
from torchcache_c.tiers import DeviceTier, HostTier

CTX = hashlib.blake2b(b"some call context", digest_size=16).digest()


def reference_keys(tensors, ctx=CTX, subsample_count=None):
    """The item keys as cache.py defined them before the C path (docs/shim.md)."""
    batch = tensors[0].shape[0]
    pair = torch.tensor([[int.from_bytes(ctx[:8], "little", signed=True),
                          int.from_bytes(ctx[8:], "little", signed=True)]])
    columns = [pair.expand(batch, 2)]
    columns += [hash_tensor(t, subsample_count=subsample_count) for t in tensors]
    return hash_tensor(torch.stack(columns, dim=1))


def leaf_keys(keys, leaf):
    const = _leaf_constants(leaf + 1)[16 * leaf:]
    pair = torch.tensor([[int.from_bytes(const[:8], "little", signed=True),
                          int.from_bytes(const[8:], "little", signed=True)]])
    return (keys ^ pair).contiguous()


def c_keys(tensors, subsample_count=0, threads=1):
    store = _C.Store(None)
    keys, hits, miss, outs = _C.call_fetch(store, tensors, CTX, None, subsample_count, threads)
    assert (hits, miss, outs) == (0, None, None)
    return torch.frombuffer(bytearray(keys), dtype=torch.int64).view(-1, 2)


g = torch.Generator().manual_seed(0)
INPUTS = {
    "one float": [torch.randn(5, 768, generator=g)],
    "two inputs": [torch.randn(5, 3, generator=g), torch.randint(0, 9, (5, 16), generator=g)],
    "non-contiguous": [torch.randn(6, 5, generator=g).t()],
    "channels_last": [torch.randn(3, 3, 8, 8, generator=g).to(memory_format=torch.channels_last)],
    "many dtypes": [torch.randn(4, 2, generator=g).half(), torch.ones(4, 3, dtype=torch.bool),
                    torch.randn(4, 2, generator=g).bfloat16(), torch.arange(4, dtype=torch.uint8),
                    torch.randn(4, 1, generator=g, dtype=torch.float64)],
    "large items": [torch.randn(3, 3 * 64 * 64, generator=g)],
    "empty items": [torch.zeros(4, 0)],
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_c_keys_equal_the_documented_definition(name):
    tensors = INPUTS[name]
    assert torch.equal(c_keys(tensors), reference_keys(tensors))


def test_c_keys_with_a_sample_and_threads_equal_the_definition():
    x = torch.randn(64, 4096)
    assert torch.equal(c_keys([x], subsample_count=7), reference_keys([x], subsample_count=7))
    assert torch.equal(c_keys([x], threads=4), reference_keys([x]))


def fill(store, keys, leaf, values, rows=None):
    rows = range(len(keys)) if rows is None else rows
    for r in rows:
        store.put(leaf_keys(keys[r:r + 1], leaf), values[r:r + 1].contiguous())


def test_split_and_gather_match_the_store_for_each_leaf():
    x = torch.randn(7, 4)
    keys = reference_keys([x])
    store = _C.Store(None)
    a, b = torch.randn(7, 3), torch.arange(7 * 2, dtype=torch.int64).view(7, 2)
    fill(store, keys, 0, a, rows=[0, 1, 2, 4, 6])
    fill(store, keys, 1, b, rows=[0, 2, 3, 4, 5, 6])
    got_keys, hits, miss, outs = _C.call_fetch(store, [x], CTX, _leaf_constants(2), 0, 1)
    assert torch.equal(torch.frombuffer(bytearray(got_keys), dtype=torch.int64).view(-1, 2), keys)
    assert hits == 4  # rows 0, 2, 4, 6 have both leaves
    assert torch.frombuffer(bytearray(miss), dtype=torch.int64).tolist() == [1, 3, 5]
    out_a, out_b = (torch.from_dlpack(c) for c in outs)
    assert out_a.shape == (7, 3) and out_a.dtype == torch.float32
    assert out_b.shape == (7, 2) and out_b.dtype == torch.int64
    for r in (0, 2, 4, 6):
        assert torch.equal(out_a[r], a[r]) and torch.equal(out_b[r], b[r])


def test_keys_from_an_earlier_fetch_are_looked_up_without_the_inputs():
    # The remote tier's second lookup (cache.py) passes the first call's keys, not the
    # inputs: the same split and rows as a fetch that hashes them.
    x = torch.randn(6, 4)
    keys = reference_keys([x])
    store = _C.Store(None)
    a = torch.randn(6, 3)
    fill(store, keys, 0, a, rows=[1, 2, 5])
    key_bytes, hits, miss, outs = _C.call_fetch(store, [x], CTX, _leaf_constants(1), 0, 1)
    again = _C.call_fetch(store, key_bytes, b"\0" * 16, _leaf_constants(1), 0, 1)
    assert again[0] == key_bytes and (again[1], again[2]) == (hits, miss) == (
        3, rows_bytes([0, 3, 4]))
    assert torch.equal(torch.from_dlpack(again[3][0])[[1, 2, 5]], a[[1, 2, 5]])
    fill(store, keys, 0, a, rows=[0, 3, 4])
    _, hits, miss, outs = _C.call_fetch(store, key_bytes, CTX, _leaf_constants(1), 0, 1)
    assert (hits, miss) == (6, None) and torch.equal(torch.from_dlpack(outs[0]), a)
    with pytest.raises(TypeError, match="keys must be bytes, 16 per row"):
        _C.call_fetch(store, key_bytes[:-1], CTX, _leaf_constants(1), 0, 1)
    with pytest.raises(TypeError, match="keys must be bytes, 16 per row"):
        _C.call_fetch(store, b"", CTX, _leaf_constants(1), 0, 1)


def damage(path, values: torch.Tensor, row: int, back: int = 0) -> None:
    """Flips one byte of row `row`'s record in the segment under path: `back` bytes
    before its payload (0: the payload's first byte; 64: inside its header)."""
    (seg,) = list(pathlib.Path(path).glob("seg-*.tcs"))
    data = bytearray(seg.read_bytes())
    at = data.find(values[row].numpy().tobytes()) - back
    assert at >= 0
    data[at] ^= 0x10
    seg.write_bytes(bytes(data))


@pytest.mark.parametrize("first", [False, True])
def test_damaged_records_are_not_served_at_their_first_use(tmp_path, first):
    # The call path's lookup leaves records unverified (a fresh process then reads
    # each record once); the gather verifies each at its first use.  A damaged
    # payload, or the header of the row that names the output, is a miss.
    keys = torch.stack([torch.arange(8), torch.arange(8) + 100], 1)
    values = torch.randn(8, 16)
    with _C.Store(str(tmp_path)) as w:
        w.put(keys, values)
    damage(tmp_path, values, 5)
    if first:
        damage(tmp_path, values, 0, back=64)
    zero = b"\0" * 16  # leaf constant 0: the stored keys are the leaf keys
    store = _C.Store(str(tmp_path))
    _, hits, miss, outs = _C.call_fetch(store, keys.numpy().tobytes(), zero, zero, 0, 1)
    bad = [0, 5] if first else [5]
    assert hits == 8 - len(bad)
    assert torch.frombuffer(bytearray(miss), dtype=torch.int64).tolist() == bad
    good = [r for r in range(8) if r not in bad]
    assert torch.equal(torch.from_dlpack(outs[0])[good], values[good])
    assert store.stats()["corrupt"] == len(bad)
    # the next call knows: the damaged rows miss at the lookup, the rest are served
    _, hits, miss, _ = _C.call_fetch(store, keys.numpy().tobytes(), zero, zero, 0, 1)
    assert hits == 8 - len(bad)
    assert torch.frombuffer(bytearray(miss), dtype=torch.int64).tolist() == bad


def test_every_record_damaged_is_every_row_computed(tmp_path):
    keys = torch.stack([torch.arange(4), torch.arange(4) + 7], 1)
    values = torch.randn(4, 16)
    with _C.Store(str(tmp_path)) as w:
        w.put(keys, values)
    for row in range(4):
        damage(tmp_path, values, row, back=64 * (row % 2))
    zero = b"\0" * 16
    _, hits, miss, outs = _C.call_fetch(_C.Store(str(tmp_path)), keys.numpy().tobytes(), zero,
                                        zero, 0, 1)
    assert (hits, miss, outs) == (0, None, None)


def test_a_damaged_record_under_a_cached_module_is_recomputed(tmp_path):
    rows = []

    class Enc(nn.Module):
        def forward(self, x):
            rows.append(x.shape[0])
            return x * 3

    x = torch.randn(6, 16)
    first = torchcache(persistent=True, persistent_cache_dir=str(tmp_path))(Enc)()
    with torch.no_grad():
        expected = first(x)
    (seg,) = tmp_path.rglob("seg-*.tcs")
    damage(seg.parent, expected, 2)
    fresh = torchcache(persistent=True, persistent_cache_dir=str(tmp_path))(Enc)()
    with torch.no_grad():
        out = fresh(x)
        again = fresh(x)
    assert torch.equal(out, expected) and torch.equal(again, expected)
    assert rows == [6, 1]  # the damaged row alone ran forward, then it was stored again


def test_a_row_whose_record_has_another_item_shape_is_a_miss():
    x = torch.randn(3, 4)
    keys = reference_keys([x])
    store = _C.Store(None)
    fill(store, keys, 0, torch.randn(3, 5), rows=[0, 1])
    store.put(leaf_keys(keys[2:], 0), torch.randn(1, 6))
    _, hits, miss, outs = _C.call_fetch(store, [x], CTX, _leaf_constants(1), 0, 1)
    assert hits == 2
    assert torch.frombuffer(bytearray(miss), dtype=torch.int64).tolist() == [2]


def test_call_put_stores_the_rows_under_their_leaf_keys():
    x = torch.randn(5, 4)
    keys = reference_keys([x])
    store = _C.Store(None)
    key_bytes = _C.call_fetch(_C.Store(None), [x], CTX, None, 0, 1)[0]
    rows = torch.tensor([1, 3], dtype=torch.int64)
    values = torch.randn(2, 3)
    assert _C.call_put(store, key_bytes, rows_bytes(rows), _leaf_constants(1), [values]) == 2
    present = store.lookup(leaf_keys(keys, 0))
    assert list(present) == [0, 1, 0, 1, 0]
    dest = torch.empty(2, 3)
    store.gather(leaf_keys(keys[rows], 0), dest)
    assert torch.equal(dest, values)
    # None: rows 0..N-1; present keys are skipped
    assert _C.call_put(store, key_bytes, None, _leaf_constants(1), (torch.randn(5, 3),)) == 3


def test_call_put_stores_every_leaf_under_its_own_constant():
    x = torch.randn(4, 3)
    keys = reference_keys([x])
    key_bytes = _C.call_fetch(_C.Store(None), [x], CTX, None, 0, 1)[0]
    store = _C.Store(None)
    first, second = torch.randn(2, 5), torch.arange(6, dtype=torch.int64).view(2, 3)
    rows = [0, 2]
    assert _C.call_put(store, key_bytes, rows_bytes(rows), _leaf_constants(2),
                       (first, second)) == 2
    for j, want in enumerate((first, second)):
        lk = leaf_keys(keys, j)
        assert list(store.lookup(lk)) == [1, 0, 1, 0]
        dest = torch.empty_like(want)
        store.gather(lk[rows], dest)
        assert torch.equal(dest, want)
    # the fewest rows any leaf stored: leaf 0 holds rows 0, 1 and 2 now, leaf 1 rows 0, 2
    store.put(leaf_keys(keys, 0)[1:2], torch.randn(1, 5))
    assert _C.call_put(store, key_bytes, None, _leaf_constants(2),
                       [torch.randn(4, 5), torch.zeros(4, 3, dtype=torch.int64)]) == 1
    for j in range(2):
        assert list(store.lookup(leaf_keys(keys, j))) == [1, 1, 1, 1]
    dest = torch.empty(2, 3, dtype=torch.int64)  # present rows are not replaced
    store.gather(leaf_keys(keys, 1)[rows], dest)
    assert torch.equal(dest, second)


def test_call_put_on_a_full_store_stores_what_fits():
    x = torch.randn(3, 2)
    key_bytes = _C.call_fetch(_C.Store(None), [x], CTX, None, 0, 1)[0]
    store = _C.Store(None, max_bytes=1)
    assert _C.call_put(store, key_bytes, None, _leaf_constants(1), [torch.randn(3, 8)]) == 0
    assert store.is_full


def test_call_put_checks_its_leaves():
    store, x = _C.Store(None), torch.randn(2, 3)
    keys = _C.call_fetch(store, [x], CTX, None, 0, 1)[0]
    with pytest.raises(ValueError, match="srcs holds 1 tensors for 2 leaves"):
        _C.call_put(store, keys, None, _leaf_constants(2), [torch.randn(2, 3)])
    with pytest.raises(TypeError, match="srcs must be a tuple or list of tensors"):
        _C.call_put(store, keys, None, _leaf_constants(1), torch.randn(2, 3))
    with pytest.raises(TypeError, match="leaves must be 16 bytes per leaf"):
        _C.call_put(store, keys, None, b"", [])
    with pytest.raises(ValueError, match=r"src 1 must be a contiguous host tensor \(2, \.\.\.\)"):
        _C.call_put(store, keys, None, _leaf_constants(2), [torch.randn(2, 3), torch.randn(3, 3)])
    # nothing was stored by the refused calls
    assert list(store.lookup(leaf_keys(reference_keys([x]), 0))) == [0, 0]


def rows_bytes(rows):
    return b"".join(int(r).to_bytes(8, "little", signed=True) for r in rows)


def test_call_functions_check_their_arguments():
    store, x = _C.Store(None), torch.randn(2, 3)
    with pytest.raises(TypeError, match=r"call_fetch\(\) takes 6 arguments \(5 given\)"):
        _C.call_fetch(store, [x], CTX, None, 0)
    with pytest.raises(TypeError, match=r"call_put\(\) takes 5 arguments \(4 given\)"):
        _C.call_put(store, b"", None, _leaf_constants(1))
    with pytest.raises(TypeError):
        _C.call_fetch("not a store", [x], CTX, None, 0, 1)
    with pytest.raises(TypeError, match="rows must be None or int64 indices as bytes"):
        _C.call_put(store, b"\0" * 32, b"\0" * 7, _leaf_constants(1), [torch.randn(1, 3)])
    with pytest.raises(TypeError, match="keys must be bytes, 16 per row"):
        _C.call_put(store, b"\0" * 17, None, _leaf_constants(1), [torch.randn(1, 3)])
    with pytest.raises(TypeError, match="leaves must be None or 16 bytes per leaf"):
        _C.call_fetch(store, [x], CTX, b"", 0, 1)
    with pytest.raises(TypeError):
        _C.call_fetch(store, [x], b"short", None, 0, 1)
    with pytest.raises(TypeError):
        _C.call_fetch(store, [x], CTX, b"x" * 17, 0, 1)
    with pytest.raises(ValueError):
        _C.call_fetch(store, [x], CTX, None, -1, 1)
    keys = _C.call_fetch(store, [x], CTX, None, 0, 1)[0]
    with pytest.raises(IndexError):
        _C.call_put(store, keys, rows_bytes([5]), _leaf_constants(1), [torch.randn(1, 3)])
    with pytest.raises(ValueError):
        _C.call_put(store, keys, None, _leaf_constants(1), [torch.randn(3, 2).t()])
    store.close()
    with pytest.raises(_C.StoreClosedError):
        _C.call_fetch(store, [x], CTX, None, 0, 1)


def test_inputs_it_cannot_read_are_left_to_the_caller():
    store = _C.Store(None)
    assert _C.call_fetch(store, [torch.empty(2, 3, device="meta")], CTX, None, 0, 1) is None
    assert _C.call_fetch(store, [torch.randn(2, 3).to_sparse()], CTX, None, 0, 1) is None
    assert _C.call_fetch(store, [torch.randn(2, 3), torch.randn(3, 3)], CTX, None, 0, 1) is None
    # a device tier's slabs live on the device: its handle has no C store for the
    # one-call path, so the step-by-step path serves it
    assert _StoreHandle(DeviceTier(torch.device("cpu"), 0)).c_store is None
    host = _C.Store(None)
    assert _StoreHandle(HostTier(host, _dtype_from_word)).c_store is host


# ---- through the decorator ---------------------------------------------------------------

class TwoLeaves(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, *, scale=1.0):
        self.calls.append(x.shape[0])
        return {"f": (x * scale).sum(1, keepdim=True), "i": (x > 0).long()}


@pytest.mark.parametrize("persistent", [False, True])
def test_partial_hits_with_several_leaves_equal_uncached(persistent, tmp_path):
    m = torchcache(persistent=persistent, persistent_cache_dir=tmp_path if persistent else None,
                   cache_dtype=torch.float16)(TwoLeaves)()
    ref = TwoLeaves()
    x = torch.randn(10, 4)
    with torch.no_grad():
        m(x[::3], scale=1.0)
        out = m(x, scale=1.0)
        again = m(x, scale=1.0)
    assert m.calls == [4, 6]
    want = ref(x)
    assert torch.equal(out["i"], want["i"]) and out["f"].dtype == torch.float32
    assert torch.equal(out["f"], want["f"].half().float())
    assert torch.equal(again["f"], out["f"]) and torch.equal(again["i"], out["i"])


def test_a_conjugate_view_is_keyed_by_its_values():
    @torchcache()
    class Real(nn.Module):
        def forward(self, z):
            return torch.view_as_real(z.resolve_conj()).flatten(1)

    m = Real()
    z = torch.randn(3, 2, dtype=torch.complex64)
    with torch.no_grad():
        plain = m(z)
        conj = m(z.conj())
        conj_again = m(z.conj().resolve_conj())
    assert not torch.equal(plain, conj)
    assert torch.equal(conj, conj_again)
    assert torch.equal(conj, Real.__mro__[1].forward(m, z.conj()))


def test_store_written_by_the_step_path_hits_through_the_c_path(tmp_path):
    """A persistent directory holds item keys: the C path must find what the step
    path (the previous release's only path) stored."""
    @torchcache(persistent=True, persistent_cache_dir=tmp_path)
    class Double(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x * 2

    m = Double()
    x = torch.randn(6, 5)
    cache = m.cache_instance
    with torch.no_grad():
        m(x[:1])  # opens the store and records the layout
        handle, _, ctx = cache._context("0=T", x.device, False, m.training)
        found = cache._find_steps(handle, [x], ctx, None, x.device, 6)
        handle.store.put(leaf_keys(found.keys, 0), x * 2)
        calls = m.calls
        assert torch.equal(m(x), x * 2)
    assert m.calls == calls


def test_recycled_output_buffers_never_alias_a_live_output():
    """call_fetch keeps the buffers of released outputs for later calls of the same
    size (csrc/call.c, out_alloc): an output still alive is never handed out again,
    and a recycled one holds the new call's rows, not the old ones."""
    class Wide(nn.Module):
        def forward(self, x):
            return x.repeat(1, 64) * 3.0  # (B, 256) float32: 64 KiB for 64 rows

    m = torchcache()(Wide)()
    batches = [torch.randn(64, 4, generator=torch.Generator().manual_seed(i))
               for i in range(6)]
    with torch.no_grad():
        want = [Wide()(b) for b in batches]
        for b in batches:
            m(b)  # misses: every batch stored
        for _ in range(3):
            kept = [m(b) for b in batches]  # hits, all alive at once
            for got, w in zip(kept, want, strict=True):
                assert torch.equal(got, w)
            ptrs = {t.data_ptr() for t in kept}
            assert len(ptrs) == len(kept)
            del kept  # their buffers go back to the pool
            for b, w in zip(batches, want, strict=True):
                out = m(b)  # recycled buffers, released at once
                assert torch.equal(out, w)


@pytest.mark.parametrize("persistent", [False, True])
def test_non_contiguous_outputs_are_stored_and_served_by_value(tmp_path, persistent):
    # forward returns (B, D) views that are not contiguous (a transposed buffer and a
    # strided slice): call_put takes contiguous rows only, so the shim copies them.
    calls = []

    @torchcache(persistent=persistent, persistent_cache_dir=str(tmp_path))
    def f(x):
        calls.append(len(x))
        t = torch.empty(x.shape[1], x.shape[0])
        t.copy_((x * 2).t())
        return {"t": t.t(), "s": (x + 1).repeat_interleave(2, dim=1)[:, ::2]}

    x = torch.randn(6, 5)
    want = {"t": x * 2, "s": x + 1}
    probe = f.__wrapped__(x)  # forward itself: both leaves are non-contiguous views
    assert not (probe["t"].is_contiguous() or probe["s"].is_contiguous())
    calls.clear()
    first = f(x)
    again = f(x)
    part = f(torch.cat([x[:3], torch.randn(2, 5)]))
    assert calls == [6, 2]
    for name in want:
        assert torch.equal(first[name], want[name]) and torch.equal(again[name], want[name])
        assert torch.equal(part[name][:3], want[name][:3])
