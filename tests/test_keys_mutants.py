"""Behaviours of the module key that mutation testing found unguarded (docs/testing.md,
"Mutation testing"). Each test states a behaviour; outputs are checked against the module
run without the cache, keys against what the module computes (equal computation, equal
key; different computation, different key), messages against what they must tell the user.
"""
import logging

import pytest
import torch
import torch.nn as nn

from torchcache_c import keys, torchcache

# Read by _GlobalReader.forward; one test deletes it (monkeypatch restores it).
_MAYBE_NONE = None


class _Slotted:
    """A config object without __dict__: its contents are its slots."""
    __slots__ = ("scale",)

    def __init__(self, scale):
        self.scale = scale


@torchcache()
class _SlotConfigured(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.cfg = _Slotted(scale)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.cfg.scale


def test_a_config_object_with_slots_is_keyed_by_its_slots():
    x = torch.randn(3, 4)
    m = _SlotConfigured(2.0).eval()
    with torch.no_grad():
        m(x)
        m.cfg = _Slotted(3.0)
        out = m(x)
    assert torch.equal(out, x * 3.0) and m.calls == 2
    a, b, c = _SlotConfigured(2.0), _SlotConfigured(2.0), _SlotConfigured(3.0)
    assert a.cache_instance.module_hash == b.cache_instance.module_hash
    assert a.cache_instance.module_hash != c.cache_instance.module_hash


@torchcache()
class _GlobalReader(nn.Module):
    def forward(self, x):
        return x if _MAYBE_NONE is None else x + 1


def test_a_global_that_held_none_and_is_deleted_is_not_served_from_the_old_key(monkeypatch):
    """Without the cache, forward raises NameError once the global is gone; the cache
    must not answer from the key computed while it existed."""
    m = _GlobalReader().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(m(x), x)
        monkeypatch.delitem(globals(), "_MAYBE_NONE")
        with pytest.raises(NameError):
            m(x)


def test_the_address_warning_is_given_once_and_says_what_to_do(caplog, monkeypatch):
    monkeypatch.setattr(keys, "_warned_address", set())

    class Opaque:
        __slots__ = ()

    with caplog.at_level(logging.WARNING, logger="torchcache_c"):
        keys._Walk().value(Opaque())
        keys._Walk().value(Opaque())
    records = [r for r in caplog.records if "memory address" in r.getMessage()]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "Opaque" in message
    for advice in ("every process gets another key", "persistent cache is never shared",
                   "__repr__ without addresses", "persistent_module_hash"):
        assert advice in message


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


@torchcache()
class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Inner()
        self.requires_grad_(False)

    def forward(self, x):
        return self.block(x)


def test_a_parameter_requiring_grad_is_named_by_its_path_with_the_remedy():
    m = _Outer().eval()
    x = torch.randn(2, 4)
    m(x)
    m.block.lin.weight.requires_grad_(True)
    with pytest.raises(keys.TrainableParametersError) as err:
        m(x)
    message = str(err.value)
    assert message.startswith("parameter 'block.lin.weight' requires grad")
    assert "Freeze it with requires_grad_(False) or call under torch.no_grad()" in message
