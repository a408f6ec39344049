"""torchcache_c.structure: output layouts (flatten/unflatten through JSON) and call inputs."""
import collections
import dataclasses
import enum
import json
import sys
import types
from collections import OrderedDict, UserDict, defaultdict, namedtuple
from collections.abc import Mapping
from typing import Optional, Tuple

import numpy as np
import pytest
import torch

from torchcache_c.structure import (
    LayoutUnavailable,
    flatten_inputs,
    flatten_output,
    index_inputs,
    leaf_paths,
    unflatten_output,
)

# ---- module-level types (resolvable by name, as in a real program) -----------------------

Pair = namedtuple("Pair", ["first", "second"])


@dataclasses.dataclass
class Out:
    hidden: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    extra: Optional[Tuple[torch.Tensor, ...]] = None
    note: str = "n"


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: torch.Tensor
    b: int = 3
    derived: Optional[torch.Tensor] = dataclasses.field(default=None, init=False)


@dataclasses.dataclass
class DictOutput(OrderedDict):
    """The shape of transformers' ModelOutput: an OrderedDict that is a dataclass whose
    dict entries are the fields that are not None."""
    last: Optional[torch.Tensor] = None
    pooled: Optional[torch.Tensor] = None
    hidden: Optional[tuple] = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                self[f.name] = value

    def __getitem__(self, k):
        if isinstance(k, str):
            return dict(self.items())[k]
        return tuple(self.values())[k]


class MyDict(dict):
    pass


class MyOrdered(OrderedDict):
    pass


class Features(UserDict):
    """Like transformers' BatchEncoding / BatchFeature: a UserDict with extra state."""

    def __init__(self, data=None, tag="t"):
        super().__init__(data)
        self.tag = tag


class FrozenMapping(Mapping):
    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, k):
        return self._data[k]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


class Color(enum.Enum):
    RED = 1
    BLUE = 2


def x(n=4, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def roundtrip(obj):
    spec, leaves = flatten_output(obj)
    spec = json.loads(json.dumps(spec))  # written to and read from the sidecar file
    return unflatten_output(spec, [t.clone() for t in leaves])


def assert_same(a, b, path="output"):
    assert type(a) is type(b), f"{path}: {type(a)} is not {type(b)}"
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif dataclasses.is_dataclass(a):
        names = [f.name for f in dataclasses.fields(a)]
        assert names == [f.name for f in dataclasses.fields(b)]
        for n in names:
            assert_same(getattr(a, n), getattr(b, n), f"{path}.{n}")
        if isinstance(a, dict):
            assert list(a.keys()) == list(b.keys()), path
    elif isinstance(a, (dict, UserDict)):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=False)):
            assert_same(u, v, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path  # NaN equals NaN here


# ---- outputs: round trips ------------------------------------------------------------------

ROUND_TRIPS = {
    "tensor": lambda: x(),
    "tuple": lambda: (x(), x(seed=1)),
    "empty tuple": lambda: (x(), ()),
    "list": lambda: [x(), [x(seed=1)]],
    "dict": lambda: {"b": x(), "a": (x(seed=1), {"c": x(seed=2)})},
    "constants": lambda: (x(), None, 3, 2.5, float("inf"), float("nan"), "s", True, False, -0.0),
    "OrderedDict": lambda: OrderedDict([("z", x()), ("a", None)]),
    "dict subclass": lambda: MyDict(b=x(), a=x(seed=1)),
    "OrderedDict subclass": lambda: MyOrdered(b=x(), a=[x(seed=1)]),
    "defaultdict": lambda: defaultdict(list, {"k": x()}),
    "defaultdict without factory": lambda: defaultdict(None, {"k": x()}),
    "UserDict subclass": lambda: Features({"pixel_values": x()}),
    "namedtuple": lambda: Pair(x(), Pair(None, x(seed=1))),
    "return_types": lambda: torch.max(x(), dim=1),
    "dataclass": lambda: Out(x(), None, (x(seed=1), x(seed=2)), "note"),
    "frozen dataclass, init=False field": lambda: Frozen(x(), 5),
    "ModelOutput-like": lambda: DictOutput(last=x(), hidden=(x(seed=1),)),
    "nested": lambda: {"outs": [Out(x()), Pair(x(), {"d": DictOutput(pooled=x())})]},
}


@pytest.mark.parametrize("make", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_output_round_trips_through_json(make):
    obj = make()
    assert_same(roundtrip(obj), obj)


def test_tensor_output_spec_is_the_plain_leaf_and_leaves_are_not_copied():
    t = x()
    spec, leaves = flatten_output(t)
    assert spec == "T" and leaves[0] is t
    assert unflatten_output("T", leaves) is t


def test_leaves_come_in_field_order_and_none_fields_are_kept():
    a, b, c = x(), x(seed=1), x(seed=2)
    spec, leaves = flatten_output(Out(a, None, (b, c)))
    assert [id(t) for t in leaves] == [id(a), id(b), id(c)]
    assert spec["fields"] == ["hidden", "pooled", "extra", "note"]
    out = unflatten_output(spec, leaves)
    assert out.pooled is None and out.extra[1] is c and out.note == "n"


def test_modeloutput_like_rebuild_indexes_and_keys_like_the_original():
    a, h = x(), x(seed=1)
    ref = DictOutput(last=a, hidden=(h,))
    out = roundtrip(ref)
    assert list(out.keys()) == ["last", "hidden"] and out.pooled is None
    assert torch.equal(out[0], a) and torch.equal(out["hidden"][0], h)


def test_frozen_dataclass_keeps_its_non_init_field():
    obj = Frozen(x(), 7)
    object.__setattr__(obj, "derived", x(seed=3))
    out = roundtrip(obj)
    assert out.b == 7 and torch.equal(out.derived, obj.derived)


def test_defaultdict_factory_and_userdict_state_come_back():
    out = roundtrip(defaultdict(list, {"k": x()}))
    assert out.default_factory is list and out["missing"] == []


def test_constants_keep_their_json_types():
    out = roundtrip((x(), 1, 1.0, True, "1", None))
    assert [type(v) for v in out[1:]] == [int, float, bool, str, type(None)]


def test_class_defined_in_a_function_is_rebuilt_in_this_process():
    @dataclasses.dataclass
    class Local:
        t: torch.Tensor
        k: Optional[torch.Tensor] = None

    obj = Local(x())
    assert_same(roundtrip(obj), obj)


def test_leaf_paths_name_every_tensor():
    spec, _ = flatten_output({"a": Out(x(), x(), (x(),)), "b": [x(), Pair(x(), None)]})
    assert leaf_paths(spec) == [
        "output['a'].hidden", "output['a'].pooled", "output['a'].extra[0]",
        "output['b'][0]", "output['b'][1].first"]


# ---- outputs: errors -------------------------------------------------------------------

@pytest.mark.parametrize("obj, path, typename", [
    ({"a": (x(), {"b": object()})}, r"output\['a'\]\[1\]\['b'\]", "builtins.object"),
    (Out(x(), extra=(x(), np.zeros(2))), r"output\.extra\[1\]", "numpy.ndarray"),
    ([x(), {x()}], r"output\[1\]", "builtins.set"),
    (Pair(x(), torch.float32), r"output\.second", "torch.dtype"),
])
def test_unsupported_output_names_path_and_type(obj, path, typename):
    with pytest.raises(TypeError, match=rf"tuples/lists/dicts.*{typename} at {path}\. "):
        flatten_output(obj)


def test_generation_cache_gets_a_hint():
    DynamicCache = type("DynamicCache", (), {})
    with pytest.raises(TypeError, match=r"output\.extra.*use_cache=False"):
        flatten_output(Out(x(), extra=DynamicCache()))


def test_non_str_dict_key_is_rejected_with_the_key():
    with pytest.raises(TypeError, match=r"output\[0\] with key 1 of type int .*keys must be str"):
        flatten_output([{1: x()}])


def test_defaultdict_with_unnamed_factory_is_rejected():
    import functools
    with pytest.raises(TypeError, match="default_factory"):
        flatten_output(defaultdict(functools.partial(list, [1]), {"k": x()}))


# ---- outputs: resolving classes, never importing ------------------------------------------

def test_module_not_imported_raises_layout_unavailable_and_is_not_imported(tmp_path,
                                                                          monkeypatch):
    name = "torchcache_c_structure_probe_mod"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import dataclasses\n@dataclasses.dataclass\nclass Out:\n    t: object = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"dataclass": [name, "Out"], "fields": ["t"], "items": ["T"]}
    with pytest.raises(LayoutUnavailable, match=f"{name}.*not imported.*never imports"):
        unflatten_output(spec, [x()])
    assert name not in sys.modules and not marker.exists()


def test_lazy_module_getattr_is_not_called():
    calls = []
    mod = types.ModuleType("torchcache_c_structure_lazy_mod")
    mod.__getattr__ = lambda attr: calls.append(attr)  # a lazy module would import here
    sys.modules[mod.__name__] = mod
    try:
        spec = {"namedtuple": [mod.__name__, "Thing"], "fields": ["a"], "items": ["T"]}
        with pytest.raises(LayoutUnavailable, match="does not define it"):
            unflatten_output(spec, [x()])
        assert calls == []
    finally:
        del sys.modules[mod.__name__]


def fake_module(monkeypatch, **attrs):
    mod = types.ModuleType("torchcache_c_structure_fake_mod")
    for k, v in attrs.items():
        v.__module__ = mod.__name__
        v.__qualname__ = k
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def test_dataclass_field_change_is_detected(monkeypatch):
    @dataclasses.dataclass
    class V1:
        a: torch.Tensor
        b: Optional[torch.Tensor] = None

    mod = fake_module(monkeypatch, Thing=V1)
    spec, leaves = flatten_output(V1(x(), x()))
    spec = json.loads(json.dumps(spec))
    assert isinstance(unflatten_output(spec, leaves), V1)

    @dataclasses.dataclass
    class V2:
        a: torch.Tensor
        c: Optional[torch.Tensor] = None

    mod.Thing = V2
    with pytest.raises(LayoutUnavailable, match=r"fields of .*Thing changed.*\['a', 'c'\]"):
        unflatten_output(spec, leaves)


def test_namedtuple_field_change_and_kind_change_are_detected(monkeypatch):
    mod = fake_module(monkeypatch, P=namedtuple("P", "a b"))
    spec, leaves = flatten_output(mod.P(x(), x()))
    spec = json.loads(json.dumps(spec))
    mod.P = namedtuple("P", "b a")
    mod.P.__module__ = mod.__name__
    with pytest.raises(LayoutUnavailable, match="changed"):
        unflatten_output(spec, leaves)
    mod.P = lambda *a: a  # no longer a class
    with pytest.raises(LayoutUnavailable, match="no longer a namedtuple"):
        unflatten_output(spec, leaves)


def test_dict_subclass_that_became_a_plain_class_is_not_used(monkeypatch):
    mod = fake_module(monkeypatch, D=type("D", (dict,), {}))
    spec, leaves = flatten_output(mod.D(a=x()))
    mod.D = type("D", (), {})
    with pytest.raises(LayoutUnavailable, match="no longer a dict subclass"):
        unflatten_output(json.loads(json.dumps(spec)), leaves)


def test_redefined_class_is_the_one_rebuilt(monkeypatch):
    mod = fake_module(monkeypatch, P=namedtuple("P", "a b"))
    spec, leaves = flatten_output(mod.P(x(), x()))
    mod.P = namedtuple("P", "a b")  # a notebook cell run again
    assert type(unflatten_output(spec, leaves)) is mod.P


@pytest.mark.parametrize("spec, n", [
    ({"bogus": 1}, 1), ("X", 1), ({"tuple": "T"}, 1), ({"const": [1]}, 0),
    ({"dict": [["a"]]}, 1), ({"mapping": ["collections", "OrderedDict"], "items": []}, 0),
    ({"dataclass": [__name__, "Out"], "fields": ["hidden"], "items": ["T"]}, 1),
    ({"dataclass": "Out", "fields": [], "items": []}, 0),
    ({"tuple": ["T", "T"]}, 1), ({"tuple": ["T"]}, 2), ("T", 2),
])
def test_malformed_layouts_and_wrong_leaf_counts_raise_layout_unavailable(spec, n):
    with pytest.raises(LayoutUnavailable):
        unflatten_output(spec, [x() for _ in range(n)])


def test_layout_unavailable_is_a_lookup_error():
    assert issubclass(LayoutUnavailable, LookupError)


def test_constructor_failure_says_what_to_do(monkeypatch):
    class Picky(dict):
        def __init__(self, *args):
            if args and not isinstance(args[0], dict):
                raise ValueError("only dicts")
            super().__init__(*args)

    spec, leaves = flatten_output(Picky({"a": x()}))
    with pytest.raises(TypeError, match="cannot rebuild a cached .*Picky.*only dicts"):
        unflatten_output(spec, leaves)


# ---- inputs --------------------------------------------------------------------------------

def test_single_tensor_fast_path():
    t = x()
    inputs, context = flatten_inputs((t,), {})
    assert inputs == [("0", t)] and inputs[0][1] is t and context == "0=T"


def test_simple_arguments_keep_the_torchcache_c_0_1_context_text():
    t = x()
    inputs, context = flatten_inputs((t, 2, (1, None)), {"mode": "a", "dtype": torch.float16})
    assert [p for p, _ in inputs] == ["0"]
    assert context == ("0=T;1=builtins.int:2;2=tuple[builtins.int:1,builtins.NoneType:None];"
                       "dtype=torch.dtype:torch.float16;mode=builtins.str:'a'")


def test_nested_tensors_get_paths_in_walk_order():
    a, b, c, d, e = (x(seed=i) for i in range(5))
    inputs, context = flatten_inputs(
        ({"input_ids": a, "attention_mask": b},),
        {"pixel_values": c, "extra": [Pair(d, 1)], "cfg": Out(e, None)})
    assert [p for p, _ in inputs] == [
        "0['input_ids']", "0['attention_mask']", "cfg.hidden", "extra[0].first",
        "pixel_values"]
    assert [id(t) for _, t in inputs] == [id(t) for t in (a, b, e, d, c)]
    assert context == (
        "0=dict{'input_ids':T,'attention_mask':T};"
        f"cfg={__name__}.Out(hidden=T,pooled=builtins.NoneType:None,extra=builtins.NoneType:None,"
        "note=builtins.str:'n');"
        f"extra=list[{__name__}.Pair(first=T,second=builtins.int:1)];pixel_values=T")


def test_kwargs_order_does_not_matter_but_dict_key_order_does():
    a, b = x(), x(seed=1)
    assert flatten_inputs((), {"a": a, "b": b}) == flatten_inputs((), {"b": b, "a": a})
    one = flatten_inputs(({"a": a, "b": b},), {})
    two = flatten_inputs(({"b": b, "a": a},), {})
    assert one[1] != two[1]


@pytest.mark.parametrize("first, second", [
    ({"k": x()}, OrderedDict(k=x())),
    ({"k": x()}, Features({"k": x()})),
    ((x(),), [x()]),
    (Pair(x(), 1), (x(), 1)),
    ((x(), 1), (x(), 1.0)),
    ((x(), 1), (x(), True)),
    ((x(), 1), (x(), "1")),
    ((x(), None), (x(), "None")),
    ((x(), Color.RED), (x(), Color.BLUE)),
    ({1: x()}, {"1": x()}),
])
def test_container_types_and_value_types_are_in_the_context(first, second):
    assert flatten_inputs((first,), {})[1] != flatten_inputs((second,), {})[1]


def test_positional_and_keyword_tensors_are_different_calls():
    t = x()
    assert flatten_inputs((t,), {})[1] != flatten_inputs((), {"x": t})[1]


def test_simple_extras_are_accepted():
    t = x()
    _, context = flatten_inputs(
        (t, torch.device("cpu"), torch.Size([2, 3]), Color.RED, frozenset({"b", "a"})), {})
    assert "device(type='cpu')" in context and "torch.Size([2, 3])" in context
    assert "Color.RED" in context and "frozenset{builtins.str:'a',builtins.str:'b'}" in context


def test_set_context_does_not_depend_on_insertion_order():
    words = [f"w{i}" for i in range(20)]
    one = flatten_inputs((x(), set(words)), {})[1]
    two = flatten_inputs((x(), set(reversed(words))), {})[1]
    assert one == two


@pytest.mark.parametrize("args, kwargs, path, typename", [
    ((x(),), {"opts": object()}, "'opts'", "object"),
    (({"input_ids": x(), "ids": np.zeros((4, 3))},), {}, "\"0\\['ids'\\]\"", "ndarray"),
    ((x(), [1, (2, object())]), {}, r"'1\[1\]\[1\]'", "object"),
    ((x(),), {"s": {x()}}, "'s'", "set"),
    (({(1, 2): x()},), {}, "'0'", "dict"),
])
def test_unsupported_input_names_path_and_type(args, kwargs, path, typename):
    with pytest.raises(TypeError, match=rf"argument {path} of type {typename} cannot be part of "
                                        "a cache key.*tensors with a batch dimension"):
        flatten_inputs(args, kwargs)


def test_numpy_input_hint():
    with pytest.raises(TypeError, match="torch.from_numpy"):
        flatten_inputs((np.zeros((2, 2)),), {})


@pytest.mark.parametrize("args, kwargs, path", [
    ((torch.tensor(1.0),), {}, "'0'"),
    ((x(),), {"b": {"scale": torch.tensor(2.0)}}, "\"b\\['scale'\\]\""),
])
def test_zero_dim_tensor_is_a_value_error_naming_the_path(args, kwargs, path):
    with pytest.raises(ValueError, match=rf"argument {path} is a 0-d tensor.*batch dimension"):
        flatten_inputs(args, kwargs)


def test_parameter_input_is_a_tensor():
    p = torch.nn.Parameter(x(), requires_grad=False)
    assert flatten_inputs((p, {"p": p}), {})[0] == [("0", p), ("1['p']", p)]


# ---- index_inputs ----------------------------------------------------------------------------

def pick(t):
    return t[torch.tensor([0, 2])]


def test_index_single_tensor():
    t = x()
    args, kwargs = index_inputs((t,), {}, pick)
    assert kwargs == {} and torch.equal(args[0], t[[0, 2]])


def test_index_preserves_every_container_type_and_passes_values_through():
    t = x()
    note = object()  # not an accepted key input, but index_inputs never looks at it
    feats = Features({"pixel_values": t, "n": 3}, tag="kept")
    frozen = Frozen(t, 4)
    args = ({"ids": t, "meta": [1, 2]}, OrderedDict(a=t), MyDict(a=t), feats,
            Pair(t, note), frozen, torch.max(t, 1), FrozenMapping({"m": t}),
            defaultdict(list, {"d": t}), [t, (t, "s")])
    new_args, new_kwargs = index_inputs(args, {"flag": True, "dc": DictOutput(last=t)}, pick)
    for old, new in zip(args, new_args, strict=False):
        assert type(old) is type(new)
    d, od, md, fe, pair, fr, mx, fm, dd, lst = new_args
    assert torch.equal(d["ids"], t[[0, 2]]) and d["meta"] is args[0]["meta"]
    assert torch.equal(od["a"], t[[0, 2]]) and torch.equal(md["a"], t[[0, 2]])
    assert torch.equal(fe["pixel_values"], t[[0, 2]]) and fe["n"] == 3 and fe.tag == "kept"
    assert torch.equal(pair.first, t[[0, 2]]) and pair.second is note
    assert torch.equal(fr.a, t[[0, 2]]) and fr.b == 4
    assert torch.equal(mx.values, t.max(1).values[[0, 2]])
    assert torch.equal(fm["m"], t[[0, 2]])
    assert torch.equal(dd["d"], t[[0, 2]]) and dd.default_factory is list
    assert torch.equal(lst[0], t[[0, 2]]) and torch.equal(lst[1][0], t[[0, 2]])
    assert lst[1][1] == "s"
    assert new_kwargs["flag"] is True and type(new_kwargs["dc"]) is DictOutput
    assert list(new_kwargs["dc"].keys()) == ["last"]
    assert torch.equal(new_kwargs["dc"]["last"], t[[0, 2]])
    # the caller's objects are not changed
    assert args[0]["ids"] is t and feats["pixel_values"] is t and frozen.a is t


def test_index_passes_tensorless_containers_through_as_the_same_objects():
    meta = {"a": [1, 2], "b": (3,)}
    t = x()
    cfg = Pair(1, [2])
    new_args, new_kwargs = index_inputs((t, meta), {"cfg": cfg}, pick)
    assert new_args[1] is meta and new_kwargs["cfg"] is cfg


def test_index_keeps_dataclass_non_init_fields():
    t = x()
    obj = Frozen(t, 2)
    object.__setattr__(obj, "derived", t * 2)
    (new,), _ = index_inputs((obj,), {}, pick)
    assert torch.equal(new.a, t[[0, 2]]) and torch.equal(new.derived, (t * 2)[[0, 2]])


def test_index_of_an_unrebuildable_mapping_names_the_argument():
    class Strict(Mapping):
        def __init__(self, a, b):
            self._d = {"a": a, "b": b}

        def __getitem__(self, k):
            return self._d[k]

        def __iter__(self):
            return iter(self._d)

        def __len__(self):
            return 2

    with pytest.raises(TypeError, match=r"argument 'batch' of type .*Strict could not be "
                                        "rebuilt"):
        index_inputs((), {"batch": Strict(x(), 1)}, pick)


def test_index_matches_flatten_inputs_paths():
    t, u = x(), x(seed=1)
    args, kwargs = ({"ids": t, "n": [u]},), {"v": Pair(u, t)}
    seen = []

    def record(tensor):
        seen.append(tensor)
        return tensor[:1]

    index_inputs(args, kwargs, record)
    assert [id(a) for a in seen] == [id(b) for _, b in flatten_inputs(args, kwargs)[0]]


def test_userdict_is_a_mapping_input():
    assert isinstance(Features(), collections.abc.Mapping)
    inputs, context = flatten_inputs((Features({"a": x()}),), {})
    assert inputs[0][0] == "0['a']" and context.startswith(f"0={__name__}.Features{{")
