"""The store's exceptions (issue 12): one hierarchy under torchcache_c.StoreError
(an OSError), raised from one table of engine codes, each also the built-in
type callers caught before."""

from __future__ import annotations

import pytest
import torch

import torchcache_c
from torchcache_c import (StoreClosedError, StoreError, StoreKeyError, StoreMismatchError,
                          StoreZstdError)
from torchcache_c._C import Store


def test_every_store_exception_is_a_store_error_and_an_oserror():
    for name in ("StoreClosedError", "StoreKeyError", "StoreCorruptError",
                 "StoreMismatchError", "StoreZstdError"):
        exc = getattr(torchcache_c, name)
        assert issubclass(exc, StoreError) and issubclass(exc, OSError), name
    assert issubclass(StoreClosedError, ValueError)
    assert issubclass(StoreKeyError, KeyError)
    assert issubclass(StoreMismatchError, ValueError)
    assert issubclass(StoreZstdError, RuntimeError)


def test_closed_store_raises_store_closed_error():
    store = Store(None)
    store.close()
    with pytest.raises(StoreClosedError, match="closed"):
        store.lookup(torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(StoreClosedError):
        store.stats()


def test_absent_key_in_entry_info_raises_store_key_error():
    with pytest.raises(StoreKeyError) as info:
        Store(None).entry_info(torch.zeros(1, 2, dtype=torch.int64), 0)
    assert "not in the store" in str(info.value)  # no KeyError quoting


def test_unusable_directory_raises_store_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        Store(str(tmp_path / "file"))


def test_bad_arguments_stay_plain_value_errors():
    with pytest.raises(ValueError) as info:
        Store(None, max_bytes=-1)
    assert not isinstance(info.value, StoreError)
