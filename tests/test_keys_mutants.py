"""Behaviours of the module key that mutation testing found unguarded (docs/testing.md,
"Mutation testing"). Each test states a behaviour; outputs are checked against the module
run without the cache, keys against what the module computes (equal computation, equal
key; different computation, different key), messages against what they must tell the user.
"""
import cmath
import functools
import logging
import math
import sys
import types

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


def _key_of(module):
    return module.cache_instance.module_hash


def test_code_nested_in_forward_is_part_of_the_key():
    """A lambda or comprehension inside forward is a code object among forward's
    constants: it is keyed, and two forwards that differ only there get different keys."""
    def make(offset):
        ns = {"nn": nn, "torchcache": torchcache}
        exec("@torchcache()\n"
             "class Nested(nn.Module):\n"
             "    def forward(self, x):\n"
             f"        shift = lambda t: t + {offset}\n"
             "        return torch.stack([shift(row) for row in x])\n", dict(ns, torch=torch), ns)
        return ns["Nested"]()

    x = torch.randn(3, 4)
    one, two, again = make(1), make(2), make(1)
    assert _key_of(one) != _key_of(two) and _key_of(one) == _key_of(again)
    with torch.no_grad():
        assert torch.equal(one(x), x + 1) and torch.equal(two(x), x + 2)


def _capture(module, inputs, output):
    """An output-capturing hook that changes nothing (transformers installs such hooks
    at the first forward)."""
    module.seen = True


@torchcache()
class _SelfHooking(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if not self.lin._forward_hooks:
            self.lin.register_forward_hook(_capture)
        return self.lin(x)


def test_a_hook_registered_after_forward_installed_its_own_is_keyed_by_its_code():
    """forward's own hook is learned and left out of the key by its code; a hook the user
    adds later, with other code, must still change the key."""
    m = _SelfHooking().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        m(x)
        m.lin.register_forward_hook(lambda mod, inp, out: out + 1)
        out = m(x)
        reference = m.lin(x)   # the submodule alone, uncached, with both hooks
    assert torch.equal(out, reference) and m.calls == 2


@torchcache()
class _Masked(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask.to_dense()


@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr", "quantized"])
def test_non_strided_and_quantized_tensor_attributes_are_keyed_by_content(layout):
    def tensor(values):
        dense = torch.tensor([[values[0], 0.0, 0.0, values[1]]])
        if layout == "sparse_coo":
            return dense.to_sparse()
        if layout == "sparse_csr":
            return dense.to_sparse_csr()
        return torch.quantize_per_tensor(dense, 0.5, 0, torch.qint8)

    a, b, c = _Masked(tensor((1.0, 2.0))), _Masked(tensor((1.0, 2.0))), _Masked(
        tensor((1.0, 3.0)))
    assert _key_of(a) == _key_of(b) and _key_of(a) != _key_of(c)
    if layout != "quantized":
        x = torch.randn(2, 4)
        with torch.no_grad():
            assert torch.equal(c(x), x * c.mask.to_dense())


@torchcache()
class _Activated(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x)


def test_a_builtin_function_argument_is_keyed_by_its_name():
    x = torch.randn(2, 3)
    tanh, sigmoid, tanh_again = _Activated(torch.tanh), _Activated(torch.sigmoid), \
        _Activated(torch.tanh)
    assert _key_of(tanh) == _key_of(tanh_again) and _key_of(tanh) != _key_of(sigmoid)
    with torch.no_grad():
        assert torch.equal(tanh(x), torch.tanh(x))
        assert torch.equal(sigmoid(x), torch.sigmoid(x))


class _Tagged:
    """Stands for an extension object: no __dict__, no slots to read, a repr that shows
    its content and its address."""
    __slots__ = ()
    tags: dict = {}

    def __init__(self, k):
        _Tagged.tags[id(self)] = k

    def __repr__(self):
        return f"<_Tagged k={_Tagged.tags[id(self)]} at 0x{id(self):x}>"


def test_an_object_known_only_by_its_repr_is_keyed_by_the_repr_without_the_address(
        monkeypatch):
    monkeypatch.setattr(keys, "_warned_address", set())
    one, two, again = _Tagged(1), _Tagged(2), _Tagged(1)
    text = keys._Walk().value(one)
    assert "k=1" in text and " at 0x" not in text
    assert text == keys._Walk().value(again) and text != keys._Walk().value(two)
    a, b, c = _Activated(one), _Activated(again), _Activated(two)
    assert _key_of(a) == _key_of(b) and _key_of(a) != _key_of(c)


def test_a_global_forward_hook_registered_later_changes_the_key():
    m = _Outer().eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        m(x)
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda mod, inp, out: out * 3 if isinstance(mod, nn.Linear) else None)
        try:
            out = m(x)
            reference = m.block(x)   # uncached, with the global hook
        finally:
            handle.remove()
    assert torch.equal(out, reference)


@torchcache()
class _WithEmpty(nn.Module):
    def __init__(self, cols):
        super().__init__()
        self.register_buffer("empty", torch.zeros(0, cols))

    def forward(self, x):
        return x + self.empty.sum()


def test_an_empty_buffer_is_keyed_by_its_shape():
    a, b, c = _WithEmpty(3), _WithEmpty(3), _WithEmpty(5)
    assert _key_of(a) == _key_of(b) and _key_of(a) != _key_of(c)
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(a(x), x)


_helpers_module = types.ModuleType("m16_user_helpers")  # user code: no file, not stdlib
_helpers_module.post = lambda y: y + 1
sys.modules["m16_user_helpers"] = _helpers_module
m16_user_helpers = _helpers_module


@torchcache()
class _UsesUserModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return m16_user_helpers.post(x)


def test_a_user_module_function_that_forward_names_is_keyed_and_rebinding_it_is_seen(
        monkeypatch):
    m = _UsesUserModule().eval()
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(m(x), x + 1)
        monkeypatch.setattr(_helpers_module, "post", lambda y: y * 2)
        out = m(x)
    assert torch.equal(out, x * 2) and m.calls == 2


class _Tally:
    def __init__(self):
        self.n = 0


_TALLY = _Tally()


@torchcache()
class _Tallied(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        _TALLY.n += 1
        return x * 2


def test_a_module_level_object_that_forward_mutates_does_not_re_key_every_call():
    """An object held by a global counts by its contents as first read (docs/keys.md,
    section 3): a tally that forward bumps must not turn every call into a miss."""
    m = _Tallied().eval()
    x = torch.randn(2, 3)
    with torch.no_grad():
        outs = [m(x) for _ in range(3)]
    assert all(torch.equal(o, x * 2) for o in outs) and m.calls == 1


def test_attributes_that_forward_assigns_are_named_in_the_log(caplog):
    # What forward assigns is learned once per class: a class of this test's own.
    m = torchcache()(type("Counting", (_Tallied,), {}))().eval()
    with caplog.at_level(logging.INFO, logger="torchcache_c"):
        with torch.no_grad():
            m(torch.randn(2, 4))
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("attributes assigned by forward are left out")]
    assert lines and "calls" in lines[0].split(": ", 1)[1].split(", ")



def _exec_module_class(body: str):
    ns = {"nn": nn, "torch": torch, "torchcache": torchcache}
    exec("@torchcache()\nclass Made(nn.Module):\n    def forward(self, x):\n" + body, ns)
    return ns["Made"]()


def test_a_set_literal_in_forward_is_keyed_by_its_members():
    a = _exec_module_class("        return x * (2 if 'a' in {'a', 'b'} else 3)\n")
    b = _exec_module_class("        return x * (2 if 'a' in {'c', 'b'} else 3)\n")
    again = _exec_module_class("        return x * (2 if 'a' in {'a', 'b'} else 3)\n")
    assert _key_of(a) != _key_of(b) and _key_of(a) == _key_of(again)


def test_partial_keywords_and_set_attributes_are_keyed_by_content():
    mul2, mul3 = functools.partial(torch.mul, other=2.0), functools.partial(torch.mul, other=3.0)
    assert _key_of(_Activated(mul2)) != _key_of(_Activated(mul3))
    assert _key_of(_Activated(mul2)) == _key_of(_Activated(functools.partial(torch.mul,
                                                                            other=2.0)))
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(_Activated(mul3)(x), x * 3.0)
    assert _key_of(_Activated({1, 2})) != _key_of(_Activated({1, 3}))
    assert _key_of(_Activated({1, 2})) == _key_of(_Activated({2, 1}))


def test_builtins_of_the_same_name_from_other_modules_get_other_keys():
    assert _key_of(_Activated(torch.exp)) != _key_of(_Activated(math.exp))
    # the same qualified name ("exp") in two modules: only the module tells them apart
    assert math.exp.__qualname__ == cmath.exp.__qualname__
    assert _key_of(_Activated(math.exp)) != _key_of(_Activated(cmath.exp))


class _SlottedScale:
    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return x * self.k


def test_a_callable_object_with_slots_is_keyed_by_its_slots():
    assert _key_of(_Activated(_SlottedScale(2.0))) != _key_of(_Activated(_SlottedScale(3.0)))


def test_a_cached_function_sees_in_place_writes_to_a_tensor_it_closes_over():
    w = torch.ones(3)

    @torchcache()
    def scaled(x):
        return x * w

    x = torch.randn(2, 3)
    with torch.no_grad():
        scaled(x)
        w.mul_(2.0)
        out = scaled(x)
    assert torch.equal(out, x * w)


def test_init_keyword_arguments_are_keyed_even_when_no_attribute_keeps_them():
    """An init argument can act through something the instance walk cannot see: the
    arguments as __init__ received them are part of the key, so Gate(on=True) and
    Gate(on=False) never share outputs, while Gate() and Gate(on=False) do."""
    @torchcache()
    class Gate(nn.Module):
        def __init__(self, on: bool = False):
            super().__init__()

        def forward(self, x):
            return x + 1

    assert Gate(on=True).cache_instance.module_hash != Gate(on=False).cache_instance.module_hash
    assert Gate().cache_instance.module_hash == Gate(on=False).cache_instance.module_hash
    assert Gate(True).cache_instance.module_hash == Gate(on=True).cache_instance.module_hash


def test_a_per_instance_option_attribute_does_not_change_the_key():
    """torchcache_<option> attributes configure the cache, not the outputs: an instance
    that sets a larger limit on itself keeps the key (and so the stored outputs) of one
    that does not."""
    class Scale(nn.Module):
        def __init__(self, big: bool = False):
            super().__init__()
            if big:
                self.torchcache_max_memory_cache_size = 10 ** 9

        def forward(self, x):
            return 2 * x

    Cached = torchcache()(Scale)
    plain, big = Cached(), Cached(big=True)
    assert big.cache_instance.options["max_memory_cache_size"] == 10 ** 9
    # the init argument differs, so compare the instance parts of the key
    assert keys.instance_state(keys._Walk(), plain) == keys.instance_state(keys._Walk(), big)
    plain.torchcache_enabled = True  # set after construction: still not part of the key
    assert keys.instance_state(keys._Walk(), plain) == keys.instance_state(keys._Walk(), big)


class _Shape:
    scale = 2.0

    @classmethod
    def make(cls, x):
        return x * cls.scale


class _BigShape(_Shape):
    scale = 5.0


def test_a_classmethod_attribute_is_keyed_by_the_class_it_is_bound_to():
    """A.make and B.make share one function but return different outputs: a module
    holding one or the other must get another key."""
    class Holder(nn.Module):
        def __init__(self, big: bool):
            super().__init__()
            self.make = _BigShape.make if big else _Shape.make

        def forward(self, x):
            return self.make(x)

    x = torch.ones(2, 3)
    small, big = Holder(False), Holder(True)
    assert not torch.equal(small(x), big(x))  # the uncached modules differ
    assert keys.instance_state(keys._Walk(), small) != keys.instance_state(keys._Walk(), big)


def test_a_library_callable_object_with_state_is_keyed_by_its_state():
    """A torch callable object that holds parameters of its own (an affine transform):
    two of them with other parameters give other outputs, so other keys."""
    from torch.distributions.transforms import AffineTransform

    class Holder(nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.t = AffineTransform(0.0, scale)

        def forward(self, x):
            return self.t(x)

    x = torch.ones(2, 3)
    two, three = Holder(2.0), Holder(3.0)
    assert not torch.equal(two(x), three(x))  # the uncached modules differ
    assert keys.instance_state(keys._Walk(), two) != keys.instance_state(keys._Walk(), three)
