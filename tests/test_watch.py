"""_C.Watch: the per-call check's C pass (csrc/watch_module.c)."""
import sys

import pytest
import torch

from torchcache_c import _C
from torchcache_c.keys import _REQUIRES_GRAD_DESCR, _VERSION_DESCR


def _watch(dicts, tensors, grad=()):
    w = _C.Watch()
    w.reset(dicts, tensors, list(grad), _VERSION_DESCR, _REQUIRES_GRAD_DESCR)
    return w


def test_unset_watch_reports_a_change():
    assert _C.Watch().changed(False) == 1


def test_dict_write_is_seen_and_an_equal_rewrite_is_not():
    d, other = {"a": 1}, {}
    w = _watch([d], [])
    assert w.changed(False) == 0
    v = d["a"]
    d["a"] = v                     # the same object again: nothing moved
    assert w.changed(False) == 0
    d["b"] = 2
    assert w.changed(False) == 1
    w = _watch([d], [])
    other["x"] = 1                  # an unwatched dict
    if sys.version_info < (3, 12):  # 3.12+: one watcher counter, a false alarm is allowed
        assert w.changed(False) == 0
    del d["b"]
    assert w.changed(False) == 1


def test_in_place_write_through_any_view_is_seen():
    p = torch.nn.Parameter(torch.zeros(4), requires_grad=False)
    w = _watch([], [p.detach()], [p])
    assert w.changed(False) == 0
    with torch.no_grad():
        p[1:].add_(1)
    assert w.changed(False) == 2


def test_requires_grad_is_read_only_when_asked():
    p = torch.nn.Parameter(torch.zeros(4), requires_grad=False)
    w = _watch([], [p.detach()], [p])
    p.requires_grad_(True)
    assert w.changed(False) == 0 and w.changed(True) == 3


def test_bad_arguments_raise_type_errors():
    with pytest.raises(TypeError, match="dicts"):
        _watch([[1]], [])
    with pytest.raises(TypeError):
        _watch([], [object()])
    with pytest.raises(TypeError, match="no arguments"):
        _C.Watch(1)
