"""Outputs and inputs as libraries shape them: walk, describe and rebuild nested structures.

Four functions, used on every cached call; none of them imports anything or runs code
named by a cache directory.

``flatten_output(obj) -> (spec, leaves)``
    Splits what ``forward`` returned into its tensor leaves (depth first, in field/item
    order) and a JSON-serializable *spec* of everything else. Supported, nested freely:

    - ``torch.Tensor`` leaves;
    - ``None``, ``bool``, ``int``, ``float``, ``str`` kept by value in the spec (the same
      value is returned for every item of every later call with the same key);
    - ``tuple`` and ``list`` (exact types);
    - ``dict`` with ``str`` keys, its subclasses (``OrderedDict``, ``defaultdict``, ...) and
      ``collections.UserDict`` subclasses (``BatchEncoding``, ``BatchFeature``);
    - namedtuples and torch's ``torch.return_types`` (struct sequences);
    - dataclass instances: every field in order, ``None`` fields kept; this covers
      transformers ``ModelOutput`` (an ``OrderedDict`` that is also a dataclass).

    Anything else raises ``TypeError`` naming the path (``output.hidden_states[2]``) and the
    type, and saying what is supported.

``unflatten_output(spec, leaves) -> object``
    Rebuilds the same types with the same fields in the same order. Classes are named in
    the spec by module and qualified name and looked up only in modules that are already
    in ``sys.modules``, through their ``__dict__`` (no import, no module ``__getattr__``);
    a class defined inside a function is found only if this process built one like it
    before. When a class cannot be found, is no longer the same kind, or its fields
    changed (names and order are recorded), ``LayoutUnavailable`` is raised: the caller
    answers the call by running ``forward``. A malformed spec, or leaves that do not match
    it, raise ``LayoutUnavailable`` too.

    Dataclasses are rebuilt by calling the class with their ``init`` fields (as
    ``torch.utils._pytree`` does; a ``ModelOutput`` fills its dict entries for the fields
    that are not None, exactly as when the model built it), other fields are set after;
    namedtuples through ``_make``; dict subclasses as ``cls(pairs)`` (``defaultdict`` with
    its recorded ``default_factory``); ``UserDict`` subclasses as ``cls(dict)``.

``flatten_inputs(args, kwargs) -> (inputs, context)``
    Walks the positional arguments, then the keyword arguments sorted by name, through
    tensors, tuples, lists, namedtuples, dataclasses and any ``Mapping`` (``dict``,
    ``OrderedDict``, transformers ``BatchEncoding``, ...). Every tensor becomes an input
    ``(path, tensor)``: paths are ``"0"``, ``"0['input_ids']"``, ``"pixel_values"``,
    ``"1.field[2]"``. Everything else goes into one deterministic context text, together
    with the structure: container types (so a ``dict`` and a ``BatchEncoding`` with the same
    items are different calls), dict key order and the position of each tensor
    (``T``). Simple values are ``int``, ``float``, ``str``, ``bool``, ``None``,
    ``torch.dtype``, ``torch.device``, enum members and ``torch.Size``; sets of them
    are sorted. The text for tensors and such values
    alone is that of torchcache_c 0.1 (``0=T;factor=builtins.int:2``). Other types raise
    ``TypeError`` naming the argument path and type; a 0-d tensor raises ``ValueError``
    (inputs need a batch dimension).

``index_inputs(args, kwargs, select) -> (args, kwargs)``
    The same arguments with every tensor ``t`` replaced by ``select(t)`` (the missed
    items), every container that holds a tensor rebuilt as the same type (a
    ``BatchEncoding`` stays a ``BatchEncoding``, a namedtuple a namedtuple, a dataclass is
    rebuilt with ``dataclasses.replace``); containers without tensors and all other values
    are passed through as they are.

Spec format (JSON; ``ref`` is ``[module, qualname]``)::

    "T"                                   the next tensor leaf
    {"const": value}                      None, bool, int, float or str
    {"tuple": [spec, ...]}                {"list": [spec, ...]}
    {"dict": [[key, spec], ...]}          a plain dict, keys in order
    {"mapping": ref, "base": "dict" | "UserDict", "items": [[key, spec], ...]}
                                          (+ "factory": ref or null for a defaultdict)
    {"namedtuple": ref, "fields": [name, ...], "items": [spec, ...]}
    {"structseq": ref, "fields": [name, ...], "items": [spec, ...]}
    {"dataclass": ref, "fields": [name, ...], "items": [spec, ...]}

``"T"``, ``tuple``, ``list`` and ``dict`` nodes are those of torchcache_c 0.1's layouts.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import enum
import sys
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

__all__ = [
    "LayoutUnavailable", "flatten_output", "unflatten_output", "leaf_paths",
    "flatten_inputs", "index_inputs",
]

Spec = Any  # JSON-serializable: str, list, dict, None, bool, int, float


class LayoutUnavailable(LookupError):
    """A stored output layout cannot be rebuilt in this process; run ``forward`` instead.

    Raised by ``unflatten_output`` when a class the layout names is not loaded (never
    imported on behalf of a cache directory), is no longer the same kind of class, has
    other fields than when the layout was written, or when the layout is malformed.
    """


_Tensor = torch.Tensor
_CONSTANTS = (type(None), bool, int, float, str)
_UserDict = collections.UserDict
_defaultdict = collections.defaultdict
_OUTPUT_SUPPORTED = (
    "torchcache_c caches outputs made of tensors, None, bool/int/float/str constants, "
    "tuples/lists/dicts (str keys, dict and UserDict subclasses included), namedtuples, "
    "torch.return_types and dataclasses (transformers ModelOutput included)"
)


# ---- class references ---------------------------------------------------------------

# Classes (and defaultdict factories) this process has flattened, by (module, qualname):
# the fallback for names that the module's namespace does not hold, such as classes
# defined inside a function. Weak, so that an old class can be collected.
_seen: Dict[Tuple[str, str], "weakref.ref[Any]"] = {}


def _ref(obj: Any) -> List[str]:
    key = (obj.__module__, obj.__qualname__)
    known = _seen.get(key)
    if known is None or known() is not obj:
        try:
            _seen[key] = weakref.ref(obj)
        except TypeError:  # builtins that do not support weak references
            pass
    return [key[0], key[1]]


# The last lookup of each top-level name, (module, object): still valid while the module
# in sys.modules and the name in it are the same objects (two dict lookups per call).
_resolved: Dict[Tuple[str, str], Tuple[Any, Any]] = {}


def _resolve(ref: Any) -> Any:
    """The object ``[module, qualname]`` names, from loaded modules only; never imports."""
    if not (isinstance(ref, list) and len(ref) == 2
            and isinstance(ref[0], str) and isinstance(ref[1], str)):
        raise LayoutUnavailable(f"malformed class reference {ref!r} in the output layout")
    module_name, qualname = ref
    module = sys.modules.get(module_name)
    last = _resolved.get((module_name, qualname))
    if last is not None and last[0] is module and module.__dict__.get(qualname) is last[1]:
        return last[1]
    obj: Any = None
    if module is not None:
        obj = module
        for part in qualname.split("."):
            # __dict__ only: no module __getattr__ (lazy imports), no descriptors.
            namespace = getattr(obj, "__dict__", None)
            obj = namespace.get(part) if isinstance(namespace, Mapping) else None
            if obj is None:
                break
        if obj is not None and "." not in qualname:
            _resolved[(module_name, qualname)] = (module, obj)
    if obj is None:
        known = _seen.get((module_name, qualname))
        obj = known() if known is not None else None
    if obj is None:
        where = ("is not imported in this process" if module is None
                 else "does not define it")
        raise LayoutUnavailable(
            f"the cached output is a {module_name}.{qualname}, but module {module_name!r} "
            f"{where}; torchcache_c never imports code named by a cache, so forward runs "
            "instead (import the module before the call to use the cache)")
    return obj


def _class(ref: Any, kind: str, check: Callable[[Any], bool]) -> type:
    cls = _resolve(ref)
    if not isinstance(cls, type) or not check(cls):
        raise LayoutUnavailable(
            f"{ref[0]}.{ref[1]} is no longer a {kind}; the cached layout is not used and "
            "forward runs instead")
    return cls


def _same_fields(cls: type, ref: List[str], recorded: Any, current: Tuple[str, ...]) -> None:
    if not isinstance(recorded, list) or tuple(recorded) != current:
        raise LayoutUnavailable(
            f"the fields of {ref[0]}.{ref[1]} changed since the output layout was stored "
            f"(stored {recorded!r}, now {list(current)!r}); forward runs instead")


_dataclass_fields: "weakref.WeakKeyDictionary[type, Tuple[Any, Tuple[str, ...]]]" = (
    weakref.WeakKeyDictionary())


def _fields(cls: type) -> Tuple[Tuple[dataclasses.Field, ...], Tuple[str, ...]]:
    """A dataclass's fields and their names, computed once per class."""
    known = _dataclass_fields.get(cls)
    if known is None:
        fields = dataclasses.fields(cls)
        known = _dataclass_fields[cls] = (fields, tuple(f.name for f in fields))
    return known


def _mapping_items(obj: Any) -> Any:
    """A mapping's items; a UserDict's straight from its dict (BatchEncoding's __getitem__
    is Python code that the walk need not run)."""
    data = obj.__dict__.get("data") if isinstance(obj, _UserDict) else None
    return data.items() if type(data) is dict else obj.items()


def _field_names(cls: type) -> Tuple[str, ...]:
    return _fields(cls)[1]


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)


def _is_structseq(cls: type) -> bool:
    return (issubclass(cls, tuple) and isinstance(getattr(cls, "n_sequence_fields", None), int)
            and getattr(cls, "n_fields", None) == cls.n_sequence_fields
            and isinstance(getattr(cls, "__match_args__", None), tuple))


# ---- outputs --------------------------------------------------------------------------

def flatten_output(obj: Any) -> Tuple[Spec, List[torch.Tensor]]:
    """Split a forward output into a JSON-serializable spec and its tensor leaves.

    Raises TypeError naming the path of an unsupported value (see the module docstring).
    """
    if isinstance(obj, _Tensor):
        return "T", [obj]
    leaves: List[torch.Tensor] = []
    return _flatten(obj, leaves, "output"), leaves


def _unsupported_output(obj: Any, path: str, why: str = "") -> TypeError:
    t = type(obj)
    if not why and t.__name__.endswith("Cache"):
        why = " (a generation cache: call the model with use_cache=False)"
    return TypeError(
        f"{_OUTPUT_SUPPORTED}; forward returned {t.__module__}.{t.__qualname__} at {path}"
        f"{why}. Return one of these (convert other values to tensors), or do not cache "
        "this module")


def _str_keys(obj: Any, path: str) -> None:
    for key in obj:
        if type(key) is not str:
            raise _unsupported_output(
                obj, path, f" with key {key!r} of type {type(key).__qualname__} (keys must be "
                "str)")


def _flatten(obj: Any, leaves: List[torch.Tensor], path: str) -> Spec:
    if isinstance(obj, _Tensor):
        leaves.append(obj)
        return "T"
    t = type(obj)
    if t is tuple or t is list:
        return {t.__name__: [_flatten(v, leaves, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if t is dict:
        _str_keys(obj, path)
        return {"dict": [[k, _flatten(v, leaves, f"{path}[{k!r}]")] for k, v in obj.items()]}
    if t in _CONSTANTS:
        return {"const": obj}
    if dataclasses.is_dataclass(t):
        names = _field_names(t)
        return {"dataclass": _ref(t), "fields": list(names),
                "items": [_flatten(getattr(obj, n), leaves, f"{path}.{n}") for n in names]}
    if isinstance(obj, tuple):
        if _is_namedtuple(t):
            kind, names = "namedtuple", t._fields
        elif _is_structseq(t):
            kind, names = "structseq", t.__match_args__
        else:
            raise _unsupported_output(obj, path)
        return {kind: _ref(t), "fields": list(names),
                "items": [_flatten(v, leaves, f"{path}.{n}")
                          for n, v in zip(names, obj, strict=False)]}
    if isinstance(obj, (dict, _UserDict)):
        _str_keys(obj, path)
        node: Dict[str, Any] = {
            "mapping": _ref(t), "base": "dict" if isinstance(obj, dict) else "UserDict",
            "items": [[k, _flatten(v, leaves, f"{path}[{k!r}]")]
                      for k, v in _mapping_items(obj)]}
        if isinstance(obj, _defaultdict):
            factory = obj.default_factory
            if factory is not None and not isinstance(
                    getattr(factory, "__qualname__", None), str):
                raise _unsupported_output(
                    obj, path, f" whose default_factory {factory!r} has no qualified name")
            node["factory"] = None if factory is None else _ref(factory)
        return node
    raise _unsupported_output(obj, path)


def unflatten_output(spec: Spec, leaves: List[torch.Tensor]) -> Any:
    """Rebuild the output that ``flatten_output`` described, around ``leaves``.

    Raises LayoutUnavailable when the spec cannot be rebuilt in this process (a class is
    not loaded, changed kind or fields, or the spec and leaves do not match).
    """
    if spec == "T":
        if len(leaves) != 1:
            raise LayoutUnavailable(
                f"the output layout holds one tensor but {len(leaves)} were given")
        return leaves[0]
    it = iter(leaves)
    out = _build(spec, it)
    rest = sum(1 for _ in it)
    if rest:
        raise LayoutUnavailable(f"the output layout holds {len(leaves) - rest} tensors but "
                                f"{len(leaves)} were given")
    return out


def _items(node: Dict[str, Any], key: str) -> list:
    items = node.get(key)
    if not isinstance(items, list):
        raise LayoutUnavailable(f"malformed output layout node {node!r}")
    return items


def _pairs(node: Dict[str, Any], key: str, it: Iterator[torch.Tensor]) -> List[Tuple[str, Any]]:
    out = []
    for pair in _items(node, key):
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise LayoutUnavailable(f"malformed output layout node {node!r}")
        out.append((pair[0], _build(pair[1], it)))
    return out


def _build(spec: Spec, it: Iterator[torch.Tensor]) -> Any:
    if spec == "T":
        leaf = next(it, None)
        if leaf is None:
            raise LayoutUnavailable("the output layout holds more tensors than were given")
        return leaf
    if not isinstance(spec, dict):
        raise LayoutUnavailable(f"malformed output layout node {spec!r}")
    if "const" in spec:
        value = spec["const"]
        if type(value) not in _CONSTANTS:
            raise LayoutUnavailable(f"malformed output layout node {spec!r}")
        return value
    if "tuple" in spec:
        return tuple([_build(s, it) for s in _items(spec, "tuple")])
    if "list" in spec:
        return [_build(s, it) for s in _items(spec, "list")]
    if "dict" in spec:
        return dict(_pairs(spec, "dict", it))
    if "dataclass" in spec:
        ref = spec["dataclass"]
        cls = _class(ref, "dataclass", dataclasses.is_dataclass)
        fields, names = _fields(cls)
        _same_fields(cls, ref, spec.get("fields"), names)
        values = [_build(s, it) for s in _items(spec, "items")]
        if len(values) != len(fields):
            raise LayoutUnavailable(f"malformed output layout node {spec!r}")
        return _make_dataclass(cls, fields, values)
    for kind, check, names_of in (("namedtuple", _is_namedtuple, lambda c: c._fields),
                                  ("structseq", _is_structseq, lambda c: c.__match_args__)):
        if kind in spec:
            ref = spec[kind]
            cls = _class(ref, kind, check)
            names = names_of(cls)
            _same_fields(cls, ref, spec.get("fields"), names)
            values = [_build(s, it) for s in _items(spec, "items")]
            if len(values) != len(names):
                raise LayoutUnavailable(f"malformed output layout node {spec!r}")
            return _construct(cls, cls._make if kind == "namedtuple" else cls, values)
    if "mapping" in spec:
        base = spec.get("base")
        if base not in ("dict", "UserDict"):
            raise LayoutUnavailable(f"malformed output layout node {spec!r}")
        base_cls = dict if base == "dict" else _UserDict
        ref = spec["mapping"]
        cls = _class(ref, f"{base} subclass", lambda c: issubclass(c, base_cls))
        pairs = _pairs(spec, "items", it)
        if issubclass(cls, _defaultdict):
            factory = spec.get("factory")
            factory = None if factory is None else _resolve(factory)
            return _construct(cls, cls, factory, pairs)
        return _construct(cls, cls, pairs if base == "dict" else dict(pairs))
    raise LayoutUnavailable(f"malformed output layout node {spec!r}")


def _construct(cls: type, make: Callable[..., Any], *args: Any) -> Any:
    try:
        return make(*args)
    except Exception as exc:
        raise TypeError(
            f"torchcache_c cannot rebuild a cached {cls.__module__}.{cls.__qualname__}: "
            f"constructing it from its stored fields raised {exc!r}. Make the class "
            "constructible from its fields, or return a plain tuple/dict") from exc


def _make_dataclass(cls: type, fields: Tuple[dataclasses.Field, ...], values: list) -> Any:
    kwargs = {f.name: v for f, v in zip(fields, values, strict=False) if f.init}
    try:
        obj = cls(**kwargs)
        for f, v in zip(fields, values, strict=False):
            if not f.init:
                object.__setattr__(obj, f.name, v)
    except Exception as exc:
        raise TypeError(
            f"torchcache_c cannot rebuild a cached {cls.__module__}.{cls.__qualname__}: "
            f"calling it with its init fields raised {exc!r}. torchcache_c rebuilds "
            "dataclass outputs as cls(**init_fields); make that work, or return a plain "
            "tuple/dict") from exc
    return obj


def leaf_paths(spec: Spec) -> List[str]:
    """The path of each tensor leaf of ``spec`` (``output.pooler_output``), for messages."""
    paths: List[str] = []

    def walk(node: Spec, path: str) -> None:
        if node == "T":
            paths.append(path)
        elif isinstance(node, dict):
            for key in ("tuple", "list"):
                if key in node:
                    for i, s in enumerate(node[key]):
                        walk(s, f"{path}[{i}]")
            for key in ("dict", "mapping"):
                if key in node:
                    for k, s in node["dict" if key == "dict" else "items"]:
                        walk(s, f"{path}[{k!r}]")
            for key in ("dataclass", "namedtuple", "structseq"):
                if key in node:
                    for name, s in zip(node["fields"], node["items"], strict=False):
                        walk(s, f"{path}.{name}")

    walk(spec, "output")
    return paths


# ---- inputs ---------------------------------------------------------------------------

def _type_name(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


# Text of a simple value: "<module>.<qualname>:<repr>", as torchcache_c 0.1 wrote it.
_SIMPLE_PREFIX = {t: f"{t.__module__}.{t.__qualname__}:"
                  for t in (int, float, str, bool, type(None), torch.dtype, torch.device)}
_SIMPLE_SUBCLASSES = (int, float, str, enum.Enum, torch.Size)
_INPUT_ACCEPTED = (
    "pass tensors with a batch dimension, or int, float, str, bool, None, torch.dtype, "
    "torch.device, enum members, and tuples, lists, dicts (any Mapping with simple keys, "
    "such as a tokenizer's BatchEncoding), namedtuples or dataclasses of these"
)


def flatten_inputs(args: tuple, kwargs: Dict[str, Any]
                   ) -> Tuple[List[Tuple[str, torch.Tensor]], str]:
    """The tensors of a call with their paths, and the context text of everything else.

    Raises TypeError for a value that cannot be part of a key, ValueError for a 0-d tensor.
    """
    if not kwargs and len(args) == 1 and isinstance(args[0], _Tensor):
        x = args[0]
        if x.ndim == 0:
            raise _zero_dim("0")
        return [("0", x)], "0=T"
    inputs: List[Tuple[str, torch.Tensor]] = []
    parts = [f"{i}={_walk(a, str(i), inputs)}" for i, a in enumerate(args)]
    if kwargs:
        parts += [f"{k}={_walk(kwargs[k], k, inputs)}" for k in sorted(kwargs)]
    return inputs, ";".join(parts)


def _zero_dim(path: str) -> ValueError:
    return ValueError(
        f"argument {path!r} is a 0-d tensor; cached inputs need a leading batch dimension "
        "(use x.reshape(1) for one item)")


def _bad_input(obj: Any, path: str, why: str = "") -> TypeError:
    t = type(obj)
    hint = ""
    if t.__module__.split(".")[0] in ("numpy", "pandas"):
        hint = " (convert arrays with torch.from_numpy / torch.as_tensor)"
    return TypeError(
        f"argument {path!r} of type {t.__qualname__} cannot be part of a cache key{why}; "
        f"{_INPUT_ACCEPTED}{hint}")


def _key_text(key: Any, obj: Any, path: str) -> str:
    t = type(key)
    if t is str or t is int or t in _SIMPLE_PREFIX or isinstance(key, _SIMPLE_SUBCLASSES):
        return repr(key)
    raise _bad_input(obj, path, f" (its key {key!r} of type {t.__qualname__} is not a str, "
                                "int, float, bool, None or enum)")


def _walk(obj: Any, path: str, inputs: List[Tuple[str, torch.Tensor]]) -> str:
    # Exact types first: isinstance(x, torch.Tensor) goes through torch's metaclass.
    t = type(obj)
    if t is _Tensor:
        if obj.ndim == 0:
            raise _zero_dim(path)
        inputs.append((path, obj))
        return "T"
    prefix = _SIMPLE_PREFIX.get(t)
    if prefix is not None:
        return prefix + repr(obj)
    if t is dict:
        return "dict{" + _walk_items(obj, path, inputs) + "}"
    if t is tuple or t is list:
        inner = ",".join([_walk(v, f"{path}[{i}]", inputs) for i, v in enumerate(obj)])
        return f"{t.__name__}[{inner}]"
    if isinstance(obj, _Tensor):  # subclasses (nn.Parameter, ...)
        if obj.ndim == 0:
            raise _zero_dim(path)
        inputs.append((path, obj))
        return "T"
    if dataclasses.is_dataclass(t):
        inner = ",".join([f"{n}={_walk(getattr(obj, n), f'{path}.{n}', inputs)}"
                          for n in _field_names(t)])
        return f"{_type_name(t)}({inner})"
    if isinstance(obj, tuple):
        names = (t._fields if _is_namedtuple(t) else
                 t.__match_args__ if _is_structseq(t) else None)
        if names is not None:
            inner = ",".join([f"{n}={_walk(v, f'{path}.{n}', inputs)}"
                              for n, v in zip(names, obj, strict=False)])
            return f"{_type_name(t)}({inner})"
    if isinstance(obj, Mapping):
        return f"{_type_name(t)}{{{_walk_items(obj, path, inputs)}}}"
    if isinstance(obj, (set, frozenset)):
        scratch: List[Tuple[str, torch.Tensor]] = []
        texts = sorted(_walk(v, f"{path}{{}}", scratch) for v in obj)
        if scratch:
            raise _bad_input(obj, path, " (a set of tensors has no order)")
        return f"{_type_name(t)}{{{','.join(texts)}}}"
    if isinstance(obj, _SIMPLE_SUBCLASSES):
        return f"{t.__module__}.{t.__qualname__}:{obj!r}"
    raise _bad_input(obj, path)


def _walk_items(obj: Any, path: str, inputs: List[Tuple[str, torch.Tensor]]) -> str:
    parts = []
    for k, v in _mapping_items(obj):
        key = repr(k) if type(k) is str else _key_text(k, obj, path)
        parts.append(f"{key}:{_walk(v, f'{path}[{key}]', inputs)}")
    return ",".join(parts)


def index_inputs(args: tuple, kwargs: Dict[str, Any],
                 select: Callable[[torch.Tensor], torch.Tensor]
                 ) -> Tuple[tuple, Dict[str, Any]]:
    """``args``/``kwargs`` with every tensor ``t`` replaced by ``select(t)``.

    Containers holding a tensor are rebuilt as the same type; everything else is passed
    through unchanged. The structure must be one that ``flatten_inputs`` accepted.
    """
    if not kwargs and len(args) == 1 and isinstance(args[0], _Tensor):
        return (select(args[0]),), {}
    new_args = tuple([_pick(a, select, str(i)) for i, a in enumerate(args)])
    new_kwargs = {k: _pick(v, select, k) for k, v in kwargs.items()}
    return new_args, new_kwargs


def _pick(obj: Any, select: Callable[[torch.Tensor], torch.Tensor], path: str) -> Any:
    if isinstance(obj, _Tensor):
        return select(obj)
    t = type(obj)
    if t in _SIMPLE_PREFIX:
        return obj
    if t is dict:
        changed = _changed(list(obj.items()), select, path, "[]")
        return {k: changed.get(k, v) for k, v in obj.items()} if changed else obj
    if t is tuple or t is list:
        values = [_pick(v, select, f"{path}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(values, obj, strict=False)) else t(values)
    if dataclasses.is_dataclass(t):
        fields = _fields(t)[0]
        changed = _changed([(f.name, getattr(obj, f.name)) for f in fields], select, path, ".")
        if not changed:
            return obj
        init = {f.name: changed[f.name] for f in fields if f.init and f.name in changed}
        new = _rebuild(obj, path, lambda: dataclasses.replace(obj, **init))
        for f in fields:  # replace() resets them; keep the values (selected if tensors)
            if not f.init:
                object.__setattr__(new, f.name, changed.get(f.name, getattr(obj, f.name)))
        return new
    if isinstance(obj, tuple):
        if _is_namedtuple(t) or _is_structseq(t):
            names = t._fields if _is_namedtuple(t) else t.__match_args__
            values = [_pick(v, select, f"{path}.{n}") for n, v in zip(names, obj, strict=False)]
            if all(a is b for a, b in zip(values, obj, strict=False)):
                return obj
            return _rebuild(obj, path, lambda: t._make(values) if _is_namedtuple(t)
                            else t(values))
        return obj  # torch.Size
    if isinstance(obj, Mapping):
        changed = _changed(list(_mapping_items(obj)), select, path, "[]")
        if not changed:
            return obj
        if isinstance(obj, _UserDict):
            new = copy.copy(obj)  # keeps the instance's other attributes
            new.data = {k: changed.get(k, v) for k, v in obj.data.items()}
            return new
        if isinstance(obj, dict):
            def rebuilt() -> Any:
                new = copy.copy(obj)
                for k, v in changed.items():
                    new[k] = v
                return new
            return _rebuild(obj, path, rebuilt)
        return _rebuild(obj, path, lambda: t({k: changed.get(k, v) for k, v in obj.items()}))
    return obj  # simple values, sets of them


def _changed(items: List[Tuple[Any, Any]], select: Callable[[torch.Tensor], torch.Tensor],
             path: str, style: str) -> Dict[Any, Any]:
    out = {}
    for k, v in items:
        new = _pick(v, select, f"{path}.{k}" if style == "." else f"{path}[{k!r}]")
        if new is not v:
            out[k] = new
    return out


def _rebuild(obj: Any, path: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception as exc:
        t = type(obj)
        raise TypeError(
            f"argument {path!r} of type {_type_name(t)} could not be rebuilt with only the "
            f"missed items ({exc!r}); pass a dict, list, tuple, namedtuple or dataclass "
            "instead") from exc

