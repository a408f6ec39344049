"""The on-device memory tier (memory_cache_device="cuda"), exercised on the CPU too."""

import pytest
import torch
import torch.nn as nn

from torchcache_c import cache as cache_module
from torchcache_c import hash_tensor, torchcache
from torchcache_c.tiers import DeviceTier


def _keys(n, offset=0):
    return hash_tensor(torch.arange(offset, offset + n, dtype=torch.int64).reshape(n, 1))


def test_rows_round_trip_and_present_keys_are_skipped():
    tier = DeviceTier(torch.device("cpu"), 0)
    keys, src = _keys(50), torch.randn(50, 3, 4)
    assert tier.put(keys, src) == 50
    assert tier.put(keys[10:20], torch.zeros(10, 3, 4)) == 0
    assert bytes(tier.lookup(keys)) == b"\x01" * 50
    order = torch.randperm(50)
    assert torch.equal(tier.rows(keys[order].contiguous()), src[order])


def test_slabs_grow_and_keep_earlier_rows():
    tier = DeviceTier(torch.device("cpu"), 0)
    chunks = [torch.randn(37, 5) for _ in range(20)]
    for i, chunk in enumerate(chunks):
        tier.put(_keys(37, 37 * i), chunk)
    assert torch.equal(tier.rows(_keys(740)), torch.cat(chunks))


def test_items_of_other_shapes_and_dtypes_get_their_own_slab():
    tier = DeviceTier(torch.device("cpu"), 0)
    a, b = torch.randn(4, 3), torch.arange(8, dtype=torch.int16).reshape(4, 2)
    tier.put(_keys(4), a)
    tier.put(_keys(4, 100), b)
    assert torch.equal(tier.rows(_keys(4)), a)
    assert torch.equal(tier.rows(_keys(4, 100)), b)
    assert tier.stats()["slabs"] == 2


def test_limit_drops_the_newest_and_sets_full():
    tier = DeviceTier(torch.device("cpu"), 10 * 4 * 8)  # room for 10 items of 8 float32
    assert tier.put(_keys(6), torch.randn(6, 8)) == 6
    assert tier.put(_keys(6, 6), torch.randn(6, 8)) == 4
    assert tier.is_full
    assert bytes(tier.lookup(_keys(12))) == b"\x01" * 10 + b"\x00" * 2
    assert tier.put(_keys(3, 50), torch.randn(3, 8)) == 0


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 3)
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return {"out": self.lin(x), "sq": self.lin(x) ** 2}


def test_decorator_serves_hits_from_the_device_tier(monkeypatch):
    monkeypatch.setattr(cache_module, "_tier_device", lambda option, dev: torch.device("cpu"))
    model = torchcache(memory_cache_device="cpu", max_memory_cache_size=10**6)(Frozen)()
    x = torch.randn(16, 6)
    order = torch.randperm(16)[:9]
    fresh = torch.randn(3, 6)
    with torch.no_grad():
        first = model(x)
        again = model(x[order])
        assert model.calls == 1
        mixed = model(torch.cat([x[:4], fresh]))
        assert model.calls == 2
        reference = Frozen()
        expected = reference(x)
        expected_fresh = reference(fresh)
    assert isinstance(model.cache_instance._handle.store, DeviceTier)
    for key in ("out", "sq"):
        assert torch.equal(first[key], expected[key])
        assert torch.equal(again[key], expected[key][order])
        assert torch.equal(mixed[key][:4], expected[key][:4])
        assert torch.allclose(mixed[key][4:], expected_fresh[key])
    assert model.cache_instance.stats()["hits"] == 9 + 4


def test_default_memory_device_keeps_the_host_arena():
    model = torchcache()(Frozen)()
    with torch.no_grad():
        model(torch.randn(2, 6))
    assert not isinstance(model.cache_instance._handle.store, DeviceTier)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_tier_keeps_outputs_on_the_gpu():
    model = torchcache(memory_cache_device="cuda")(Frozen)().cuda()
    x = torch.randn(32, 6, device="cuda")
    with torch.no_grad():
        first = model(x)
        again = model(x)
    assert model.calls == 1
    store = model.cache_instance._handle.store
    assert isinstance(store, DeviceTier) and store.device.type == "cuda"
    assert again["out"].device.type == "cuda"
    assert torch.equal(again["out"], first["out"]) and torch.equal(again["sq"], first["sq"])
