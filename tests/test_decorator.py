"""The API surface: keywords, targets, attribute overrides, enabled."""
import pytest
import torch
import torch.nn as nn

from torchcache_c import torchcache

TORCHCACHE_041_KWARGS = dict(
    memory_cache_device="cpu", subsample_count=10000, persistent=False,
    persistent_cache_dir=None, persistent_module_hash=None,
    max_persistent_cache_size=int(10e9), max_memory_cache_size=int(1e9),
    zstd_compression=False, zstd_compression_level=3, zstd_compression_threads=1,
    cache_dtype=None, use_mmap_on_load=False,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


def test_every_torchcache_041_keyword_is_accepted():
    """Accepted and carried as given; tests/test_keywords.py checks each one's effect."""
    m = torchcache(**TORCHCACHE_041_KWARGS, enabled=True)(Net)()
    x = torch.randn(2, 3)
    with torch.no_grad():
        first, again = m(x), m(x)
        assert torch.equal(first, m.lin(x)) and torch.equal(again, first)
    assert m.calls == 1
    options = m.cache_instance.rebuild_state()["options"]
    assert {k: options[k] for k in TORCHCACHE_041_KWARGS} == TORCHCACHE_041_KWARGS


def test_unknown_keyword_raises_type_error():
    with pytest.raises(TypeError, match="subsample"):
        torchcache(subsample=3)


def test_decorator_without_parentheses_raises_type_error():
    with pytest.raises(TypeError, match="parentheses"):
        torchcache(Net)


def test_non_module_class_raises_type_error():
    with pytest.raises(TypeError, match="nn.Module"):
        torchcache()(int)
    with pytest.raises(TypeError):
        torchcache()(3)


def test_zstd_without_persistent_raises_value_error():
    with pytest.raises(ValueError, match="zstd"):
        torchcache(zstd_compression=True)(Net)()


def test_decorated_class_keeps_name_and_isinstance():
    cls = torchcache()(Net)
    assert cls.__name__ == "Net" and issubclass(cls, Net)


def test_function_decoration_caches_per_item():
    calls = []

    @torchcache()
    def embed(x, scale=2.0):
        calls.append(len(x))
        return x * scale

    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(embed(x), x * 2)
    assert torch.equal(embed(x[:2]), x[:2] * 2)
    assert calls == [3]
    assert embed.__name__ == "embed" and embed.cache_instance.module_hash


def test_function_closure_value_is_in_key():
    factor = 2.0

    @torchcache()
    def scaled(x):
        return x * factor

    x = torch.ones(2, 2)
    assert torch.equal(scaled(x), x * 2)
    factor = 3.0
    assert torch.equal(scaled(x), x * 3)


def test_torchcache_attribute_overrides_decorator_argument(tmp_path):
    @torchcache(persistent=False)
    class Over(Net):
        def __init__(self):
            super().__init__()
            self.torchcache_persistent = True
            self.torchcache_persistent_cache_dir = str(tmp_path)

    m = Over()
    with torch.no_grad():
        m(torch.randn(2, 3))
    assert m.cache_instance.persistent
    assert m.cache_instance.cache_dir == tmp_path / m.cache_instance.module_hash


def test_unknown_torchcache_attribute_raises_type_error():
    @torchcache()
    class Bad(Net):
        def __init__(self):
            super().__init__()
            self.torchcache_persistnt = True

    with pytest.raises(TypeError, match="torchcache_persistnt"):
        Bad()


def test_torchcache_enabled_false_disables_one_instance():
    @torchcache()
    class Maybe(Net):
        def __init__(self, on):
            super().__init__()
            self.torchcache_enabled = on

    off, on = Maybe(False), Maybe(True)
    x = torch.randn(2, 3)
    with torch.no_grad():
        for m in (off, on):
            m(x), m(x)
    assert (off.calls, on.calls) == (2, 1)


def test_enabled_false_keyword_runs_forward_every_time():
    m = torchcache(enabled=False)(Net)()
    x = torch.randn(2, 3)
    with torch.no_grad():
        m(x), m(x)
    assert m.calls == 2


def test_parameters_requiring_grad_raise_at_construction():
    class Trainable(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(ValueError, match="requires_grad_"):
        torchcache()(Trainable)()


def test_module_hash_is_hex_and_cache_dir_none_without_persistence():
    m = torchcache()(Net)()
    int(m.cache_instance.module_hash, 16)
    assert m.cache_instance.cache_dir is None
    assert not m.cache_instance.is_memory_cache_full
    assert not m.cache_instance.is_persistent_cache_full


def test_function_closing_over_a_module_keys_its_class_code():
    def make(body):
        namespace = {"torch": torch}
        exec(f"class Encoder(torch.nn.Module):\n"
             f"    def forward(self, x):\n"
             f"        return {body}\n", namespace)
        return namespace["Encoder"]()

    x = torch.ones(3, 2)
    embeds = []
    for enc in (make("x * 2"), make("x * 3")):  # same name, no weights, other code
        @torchcache()
        def embed(x, enc=enc):
            return enc(x)

        embeds.append(embed)  # both alive: equal keys would share one store
    assert torch.equal(embeds[0](x), x * 2)
    assert torch.equal(embeds[1](x), x * 3)
