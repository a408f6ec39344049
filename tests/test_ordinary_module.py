"""A decorated module lives an ordinary PyTorch life, and options are checked early."""
import copy
import inspect
import io
import logging
import pickle

import pytest
import torch

from ordinary_modules import Backbone, CachedBackbone, Items, Persisted, persisted
from torchcache_c import torchcache


def _check(m, ref, x):
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
        assert torch.equal(m(x), ref(x))


@pytest.mark.parametrize("used_before", [False, True])
def test_deepcopy_before_and_after_use_serves_correct_outputs(used_before):
    m, ref, x = CachedBackbone(), Backbone(), torch.randn(5, 6)
    if used_before:
        _check(m, ref, x)
    c = copy.deepcopy(m)
    assert c.cache_instance is not m.cache_instance
    _check(c, ref, x)
    with torch.no_grad():
        c.lin.weight.mul_(2)       # the copy's own key follows the copy's weights
        ref.lin.weight.mul_(2)
    _check(c, ref, x)
    with torch.no_grad():
        ref.lin.weight.div_(2)
    _check(m, ref, x)
    assert list(c.state_dict()) == list(Backbone().state_dict()) == ["lin.weight", "lin.bias"]


def test_pickle_and_torch_save_round_trip():
    m, x = CachedBackbone(), torch.randn(5, 6)
    with torch.no_grad():
        m(x)
    for clone in (pickle.loads(pickle.dumps(m)), _torch_save_load(m)):
        assert type(clone) is CachedBackbone
        _check(clone, Backbone(), x)


def _torch_save_load(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_persistent_copies_share_the_directory(tmp_path):
    m, x = persisted(str(tmp_path)), torch.randn(5, 6)
    with torch.no_grad():
        m(x)
    c = copy.deepcopy(m)
    assert c.cache_instance.cache_dir == m.cache_instance.cache_dir
    with torch.no_grad():
        assert torch.equal(c(x), Persisted()(x))
    assert c.cache_instance.stats()["hits"] == 5


def test_persistent_temporary_directory_travels_with_a_pickle():
    from ordinary_modules import TmpPersisted

    m = TmpPersisted()
    clone = pickle.loads(pickle.dumps(m))
    assert clone.cache_instance.cache_dir == m.cache_instance.cache_dir


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_dataloader_workers_started_by_spawn_hold_a_decorated_module(context):
    data = Items(CachedBackbone())
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2,
                                         multiprocessing_context=context)
    got = torch.cat(list(loader))
    with torch.no_grad():
        ref = Backbone()
        assert torch.equal(got, torch.cat([ref(data.x[i:i + 1]) for i in range(len(data))]))


def test_averaged_model_deep_copies_and_serves_correct_outputs():
    from torch.optim.swa_utils import AveragedModel

    m, x = CachedBackbone(), torch.randn(5, 6)
    avg = AveragedModel(m)
    with torch.no_grad():
        assert torch.equal(avg(x), Backbone()(x))
        avg.update_parameters(m)
        assert torch.equal(avg(x), Backbone()(x))


def test_zero_item_batch_returns_forwards_output():
    m = CachedBackbone()
    with torch.no_grad():
        for _ in range(2):
            out = m(torch.randn(0, 6))
            assert out.shape == (0, 4)
        m(torch.randn(2, 6))
        assert m(torch.randn(0, 6)).shape == (0, 4)


@pytest.mark.parametrize("option, value, error, words", [
    ("max_memory_cache_size", "1GB", TypeError, "max_memory_cache_size must be a number of bytes"),
    ("max_persistent_cache_size", -1, TypeError, "max_persistent_cache_size"),
    ("cache_dtype", "float16", TypeError, "cache_dtype must be None or a floating"),
    ("cache_dtype", torch.int8, TypeError, "would truncate"),
    ("memory_cache_device", "gpu", ValueError, "memory_cache_device"),
    ("memory_cache_device", 3, TypeError, "memory_cache_device"),
    ("subsample_count", -2, TypeError, "subsample_count"),
    ("persistent", "yes", TypeError, "persistent must be True or False"),
    ("persistent_module_hash", "../x", TypeError, "persistent_module_hash"),
    ("zstd_compression_level", 99, TypeError, "zstd_compression_level"),
])
def test_bad_option_fails_when_decorating_naming_the_option(option, value, error, words):
    with pytest.raises(error, match=words) as raised:
        torchcache(**{option: value})
    assert type(raised.value) is error


def test_bad_attribute_override_fails_at_construction_naming_it():
    class Over(Backbone):
        def __init__(self):
            super().__init__()
            self.torchcache_max_memory_cache_size = "lots"

    with pytest.raises(TypeError, match="max_memory_cache_size"):
        torchcache()(Over)()


def test_help_shows_the_keyword_signature_with_a_docstring_per_option():
    params = inspect.signature(torchcache).parameters
    for name in ("memory_cache_device", "subsample_count", "persistent", "cache_dtype",
                 "max_memory_cache_size", "enabled", "use_mmap_on_load"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert f"{name}:" in torchcache.__doc__
    assert params["persistent"].default is False
    with pytest.raises(TypeError):
        torchcache(persistant=True)  # a misspelled keyword


def test_trainable_parameters_raise_assertion_error_as_in_torchcache():
    class Trainable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    with pytest.raises(AssertionError, match="require grad"):
        torchcache()(Trainable)()
    with pytest.raises(ValueError):
        torchcache()(Trainable)()


def test_clear_forgets_entries():
    m, x = CachedBackbone(), torch.randn(3, 6)
    with torch.no_grad():
        m(x)
        m.cache_instance.clear()
        m(x)
    assert m.cache_instance.stats()["misses"] == 6


def test_clear_empties_a_persistent_directory(tmp_path):
    m, x = persisted(str(tmp_path)), torch.randn(3, 6)
    with torch.no_grad():
        m(x)
    path = m.cache_instance.cache_dir
    assert any(p.name.startswith("seg-") for p in path.iterdir())
    m.cache_instance.clear()
    assert not any(p.name.startswith("seg-") for p in path.iterdir())


def test_memory_tier_is_released_when_the_module_is_deleted():
    import gc
    import weakref

    m = CachedBackbone()
    with torch.no_grad():
        m(torch.randn(3, 6))
    handle = weakref.ref(m.cache_instance._handle)
    del m
    gc.collect()
    assert handle() is None


def test_memory_tier_in_a_dataloader_worker_warns(caplog):
    import torchcache_c.cache as cache_mod

    cache_mod._warned_process.discard("worker")
    data = Items(CachedBackbone())
    with caplog.at_level(logging.WARNING, logger="torchcache_c"):
        # num_workers=0 runs in this process: no warning.
        list(torch.utils.data.DataLoader(data, batch_size=4))
    assert "DataLoader worker" not in caplog.text
    from torch.utils.data import _utils

    _utils.worker._worker_info = _utils.worker.WorkerInfo(id=0, num_workers=1, seed=0,
                                                          dataset=data)
    # A worker is a new process, which asks whether it is one at its first call
    # (a forked one too: test_cache_mutants.py checks the at-fork reset).
    cache_mod._worker_unchecked = True
    try:
        with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
            data.model(torch.randn(2, 6))
    finally:
        _utils.worker._worker_info = None
    assert "DataLoader worker" in caplog.text


def test_persistent_store_records_who_made_it_for_info_and_prune(tmp_path):
    from torchcache_c.meta import read_module_meta

    m = persisted(str(tmp_path))
    with torch.no_grad():
        m(torch.randn(2, 6))
    meta = read_module_meta(m.cache_instance.cache_dir)
    assert meta is not None and meta["qualname"] == "ordinary_modules.Persisted"
    assert meta["module_key"] == m.cache_instance.module_hash
