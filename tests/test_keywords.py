"""Each torchcache keyword takes effect: one observable consequence per keyword, seen
through the public surface (outputs, forward calls, stats, files), not only "accepted".

zstd_compression_threads and use_mmap_on_load have no observable effect by design (zstd's
frames decode the same whatever the worker count; the store always maps its segments):
their tests check that they are carried and change nothing else.
"""
import weakref

import pytest
import torch
import torch.nn as nn

from torchcache_c import _C, build_info, torchcache

HAVE_ZSTD = bool(build_info()["zstd"])
needs_zstd = pytest.mark.skipif(not HAVE_ZSTD, reason="libzstd is not installed")


# Rows each instance's forward saw, kept outside the module: state that forward changes is
# first part of the key and then dropped from it (keys.py), which makes a second instance's
# first call miss.
_ROWS = weakref.WeakKeyDictionary()


class Wide(nn.Module):
    """64 inputs, 64 outputs, fixed weights; counts the rows its forward sees."""

    def __init__(self, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.lin = nn.Linear(64, 64)
        self.lin.weight.data = torch.randn(64, 64, generator=g) * scale
        self.lin.bias.data = torch.randn(64, generator=g)
        self.requires_grad_(False)

    @property
    def rows(self):
        return _ROWS.get(self, 0)

    def forward(self, x):
        _ROWS[self] = self.rows + x.shape[0]
        return self.lin(x)


def _run(m, *xs):
    with torch.no_grad():
        return [m(x) for x in xs]


def test_subsample_count_hashes_only_the_sampled_elements():
    x = torch.randn(1, 64)
    off_sample, on_sample = x.clone(), x.clone()
    off_sample[0, 1] += 1.0  # N = 8 of 64 samples elements 0, 8, 16, ...: not 1
    on_sample[0, 8] += 1.0
    m = torchcache(subsample_count=8)(Wide)()
    first, blind, seen = _run(m, x, off_sample, on_sample)
    assert m.rows == 2  # the change outside the sample was a hit
    assert torch.equal(blind, first)
    full = torchcache()(Wide)()
    _run(full, x, off_sample, on_sample)
    assert full.rows == 3  # without sampling every change is a miss


def test_persistent_and_its_dir_write_segments_there_that_a_new_store_reads(tmp_path):
    m = torchcache(persistent=True, persistent_cache_dir=str(tmp_path))(Wide)()
    x = torch.randn(3, 64)
    (out,) = _run(m, x)
    d = m.cache_instance.cache_dir
    assert d is not None and d.parent == tmp_path and d.name == m.cache_instance.module_hash
    assert m.cache_instance.stats()["persistent_bytes"] > 0
    assert m.cache_instance.stats()["memory_bytes"] == 0
    # The records are on disk: a store opened on the directory from scratch finds them.
    fresh = _C.Store(str(d))
    try:
        assert fresh.stats()["records"] == 3
    finally:
        fresh.close()


def test_not_persistent_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = torchcache(persistent=False, persistent_cache_dir=str(tmp_path))(Wide)()
    _run(m, torch.randn(3, 64))
    assert m.cache_instance.cache_dir is None
    assert m.cache_instance.stats()["memory_bytes"] > 0
    assert list(tmp_path.iterdir()) == []


def test_persistent_module_hash_names_the_directory_and_replaces_the_key(tmp_path):
    opts = dict(persistent=True, persistent_cache_dir=str(tmp_path),
                persistent_module_hash="my-key")
    a = torchcache(**opts)(Wide)()
    b = torchcache(**opts)(Wide)(scale=2.0)  # other weights, same user-given key
    x = torch.randn(2, 64)
    (out_a,) = _run(a, x)
    (out_b,) = _run(b, x)
    assert a.cache_instance.cache_dir == tmp_path / "my-key"
    assert b.rows == 0 and torch.equal(out_b, out_a)  # the user took over invalidation


def _record_bytes(m):
    (out,) = _run(m, torch.randn(1, 64))
    return m.cache_instance.stats()["store"]["bytes_written"]


@pytest.mark.parametrize("persistent", [False, True])
def test_size_limit_keywords_bound_their_own_tier(persistent, tmp_path):
    one = _record_bytes(torchcache(persistent=True, persistent_cache_dir=str(tmp_path / "p"))(
        Wide)())
    name = "max_persistent_cache_size" if persistent else "max_memory_cache_size"
    other = "max_memory_cache_size" if persistent else "max_persistent_cache_size"
    m = torchcache(persistent=persistent, persistent_cache_dir=str(tmp_path / "c"),
                   **{name: 2 * one, other: one // 2})(Wide)()
    _run(m, *torch.randn(4, 64).split(1))
    stats = m.cache_instance.stats()
    assert stats["items_stored"] == 2  # this tier's limit, not the other's
    assert stats["store"]["bytes_written"] == 2 * one
    assert (m.cache_instance.is_persistent_cache_full if persistent
            else m.cache_instance.is_memory_cache_full)


def _compressible(x):
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 16, (512,), generator=g).to(torch.float32)
    return base.repeat(8) + x[:, :1]


@needs_zstd
def test_zstd_compression_stores_fewer_bytes_and_returns_the_same(tmp_path):
    sizes, outs = {}, {}
    for on in (False, True):
        f = torchcache(persistent=True, persistent_cache_dir=str(tmp_path / str(on)),
                       zstd_compression=on)(_compressible)
        x = torch.ones(1, 4)
        outs[on] = (f(x), f(x))
        sizes[on] = f.cache_instance.stats()["store"]["bytes_written"]
    assert sizes[True] < sizes[False] // 2
    expected = _compressible(torch.ones(1, 4))
    assert all(torch.equal(o, expected) for pair in outs.values() for o in pair)


@needs_zstd
def test_zstd_compression_level_changes_the_stored_size(tmp_path):
    sizes = {}
    for level in (-100, 19):  # a very fast level and a strong one
        f = torchcache(persistent=True, persistent_cache_dir=str(tmp_path / str(level)),
                       zstd_compression=True, zstd_compression_level=level)(_compressible)
        assert torch.equal(f(torch.ones(1, 4)), _compressible(torch.ones(1, 4)))
        sizes[level] = f.cache_instance.stats()["store"]["bytes_written"]
    assert sizes[19] < sizes[-100]


@needs_zstd
def test_zstd_compression_threads_is_carried_and_outputs_are_unchanged(tmp_path):
    f = torchcache(persistent=True, persistent_cache_dir=str(tmp_path),
                   zstd_compression=True, zstd_compression_threads=2)(_compressible)
    x = torch.ones(1, 4)
    assert torch.equal(f(x), _compressible(x)) and torch.equal(f(x), _compressible(x))
    assert f.cache_instance.rebuild_state()["options"]["zstd_compression_threads"] == 2
    assert f.cache_instance.stats()["hits"] == 1


def test_cache_dtype_stores_half_the_bytes_and_rounds_through_it():
    x = torch.randn(1, 64)
    ref = Wide()
    full = torchcache()(Wide)()
    half = torchcache(cache_dtype=torch.float16)(Wide)()
    assert _record_bytes(half) < _record_bytes(full)
    out = _run(half, x, x)
    with torch.no_grad():
        expected = ref(x).half().float()
    assert all(o.dtype == torch.float32 and torch.equal(o, expected) for o in out)


def test_use_mmap_on_load_changes_nothing(tmp_path):
    outs = []
    for flag in (False, True):
        m = torchcache(persistent=True, persistent_cache_dir=str(tmp_path),
                       use_mmap_on_load=flag)(Wide)()
        outs.append((m.cache_instance.module_hash, _run(m, torch.ones(2, 64))[0], m.rows))
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1])
    assert [rows for *_, rows in outs] == [2, 0]  # the second shares the first's entries


def test_enabled_false_runs_forward_every_time_and_stores_nothing():
    m = torchcache(enabled=False)(Wide)()
    x = torch.randn(2, 64)
    a, b = _run(m, x, x)
    assert m.rows == 4 and torch.equal(a, b)
    assert m.cache_instance.stats()["items_stored"] == 0


def test_memory_cache_device_cpu_keeps_outputs_in_host_memory():
    m = torchcache(memory_cache_device="cpu")(Wide)()
    x = torch.randn(2, 64)
    a, b = _run(m, x, x)
    assert m.rows == 2 and b.device.type == "cpu" and torch.equal(a, b)
    stats = m.cache_instance.stats()
    assert stats["memory_bytes"] > 0 and "segments" in stats["store"]  # the C host store
