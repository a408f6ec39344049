"""Module keys: everything a cached output can depend on besides the item's inputs.

This is the one home of key building (docs/keys.md says what a key covers and why).
A module key is the blake2b of five parts:

  structural  the init arguments and the cache settings that change what is stored
  code        the code of every module class in ``self.modules()`` and of the forward
              hooks, and what that code reaches: functions, classes and module-level
              values named by its bytecode, walked through user code; code of an
              installed distribution or the standard library counts by name and version
              (and, for a distribution, the digest of its RECORD file) instead
  instance    per submodule: its class, training flag, simple-typed attributes and
              the contents of config-like objects it holds (e.g. a HuggingFace config)
  weights     the contents of every parameter, buffer and tensor attribute
  globals     the module-level bindings the code read, by identity (in ``code``)

`KeyTracker.current()` answers "which key now?" on every call.  Its fast path is
one C pass (`_C.Watch`) over the dicts the parts were read from and the version
counters of the tensors; only when one moved is the affected part recomputed.
Writes the fast path cannot see (``p.data.copy_(...)``, a storage shared with
another module, a class patched in place) are caught by a full recomputation at a
bounded cadence (`FULL_CHECK_SECONDS`, at most 1% of the time spent in calls) and
by `revalidate()`.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib.metadata
import inspect
import logging
import os
import re
import site
import sys
import sysconfig
import threading
import time
import types
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import torch

from . import _C
from .hashing import hash_tensor

logger = logging.getLogger("torchcache_c")

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SIMPLE = (int, float, complex, str, bytes, bool, type(None), torch.dtype, torch.device)
# How deep object contents (config objects, dataclasses, containers) are read.
_MAX_DEPTH = 4
# A full recomputation of every part runs at a call when both hold: this many seconds
# passed since the last one, and the calls since then took >= 100x its own cost.
FULL_CHECK_SECONDS = 60.0
FULL_CHECK_COST_SHARE = 0.01

_TENSOR_BASE = getattr(torch._C, "TensorBase", None) or torch._C._TensorBase
_VERSION_DESCR = _TENSOR_BASE.__dict__["_version"]
_REQUIRES_GRAD_DESCR = _TENSOR_BASE.__dict__["requires_grad"]

# nn.Module bookkeeping that is not state of the computation, or is read separately.
_MODULE_INTERNALS = frozenset({
    "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training",
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook",
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    "cache_instance", "_compiled_call_impl",
})


class TrainableParametersError(ValueError, AssertionError):
    """A cached module has parameters that require grad.  Also an AssertionError,
    which is what torchcache 0.4.1 raised, so `except AssertionError` keeps working."""


def _warn_address(kind: str) -> None:
    if kind not in _warned_address:
        _warned_address.add(kind)
        logger.warning(
            "part of the cache key comes from the repr of %s, which holds a memory address: "
            "every process gets another key, so a persistent cache is never shared. Give "
            "the class a __repr__ without addresses, keep it out of init arguments and "
            "module attributes, or set persistent_module_hash", kind)


_warned_address: Set[str] = set()


# ---- where code lives: user code is walked, installed code counts by version ----------

@functools.lru_cache(maxsize=None)
def _library_roots() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(site-packages directories, standard-library directories), as real paths."""
    sites = set(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if isinstance(user_site, str):
        sites.add(user_site)
    sites.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    paths = sysconfig.get_paths()
    stdlib = {paths["stdlib"], paths["platstdlib"]}
    norm = lambda ps: tuple(sorted({os.path.realpath(p) + os.sep for p in ps if p}))  # noqa: E731
    return norm(sites), norm(stdlib)


@functools.lru_cache(maxsize=None)
def _all_distributions() -> Dict[str, List[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.lru_cache(maxsize=None)
def _installed(name: str) -> Optional[Tuple[str, str, str, bool]]:
    """(Name, Version, RECORD digest, whether it installs a top-level package or
    module named `name`) of the installed distribution `name`, or None.  Read once
    per process and only this much kept: torch's RECORD is 1.4 MB, and
    importlib.metadata re-reads and re-parses a file at every access (the package
    test and the token each reading it, and METADATA parsed twice, cost ~10 ms of a
    process's first call)."""
    try:
        dist = importlib.metadata.distribution(name)
        meta = dist.metadata
        record = dist.read_text("RECORD") or ""
        top_level = dist.read_text("top_level.txt") or ""
        provides = (name in top_level.split()
                    or record.startswith((f"{name}/", f"{name}.py,"))
                    or f"\n{name}/" in record or f"\n{name}.py," in record)
        digest = hashlib.blake2b(record.encode(), digest_size=8).hexdigest()
        return meta["Name"], meta["Version"], digest, provides
    except (importlib.metadata.PackageNotFoundError, OSError, KeyError):
        return None


@functools.lru_cache(maxsize=None)
def _distributions_of(top: str) -> Tuple[str, ...]:
    """The installed distributions that provide top-level package `top`.  Tries the
    distribution named like the package first (torch, transformers, numpy): scanning
    every installed distribution's metadata costs a quarter of a second in a large
    environment, one lookup by name a millisecond."""
    found = _installed(top)
    if found is not None and found[3]:
        return (found[0],)
    return tuple(sorted(_all_distributions().get(top, [])))


@functools.lru_cache(maxsize=None)
def _dist_token(dist_name: str) -> str:
    """name==version and a digest of the RECORD file (hashes of every installed file),
    so that a reinstall with other contents under the same version still counts."""
    found = _installed(dist_name)
    if found is None:
        return f"dist:{dist_name}==?"
    return f"dist:{dist_name}=={found[1]}#{found[2]}"


_PYTHON = "python:" + sys.version.split()[0]


@functools.lru_cache(maxsize=None)
def _module_origin(modname: str) -> Optional[str]:
    """The token of the installed code that defines module `modname`, or None for user
    code (to be walked).  Decided by file location, so an editable install or a
    project on sys.path is user code and a pip-installed package is not."""
    if not modname or modname == "__main__":
        return None
    top = modname.split(".")[0]
    if top in sys.builtin_module_names or modname in sys.builtin_module_names:
        return _PYTHON
    module = sys.modules.get(modname) or sys.modules.get(top)
    path = getattr(module, "__file__", None)
    if path is None:
        return _PYTHON if top in getattr(sys, "stdlib_module_names", ()) else None
    real = os.path.realpath(path)
    sites, stdlib = _library_roots()
    if any(real.startswith(s) for s in sites):
        dists = _distributions_of(top)
        if dists:
            return "+".join(_dist_token(d) for d in sorted(dists))
        st = os.stat(real)
        return f"file:{real}:{st.st_size}:{st.st_mtime_ns}"
    if any(real.startswith(s) for s in stdlib):
        return _PYTHON
    return None


def _origin_of(obj: Any) -> Optional[str]:
    if isinstance(obj, types.ModuleType):
        return _module_origin(obj.__name__)
    modname = getattr(obj, "__module__", None) or ""
    origin = _module_origin(modname)
    if origin is not None and isinstance(obj, (type, types.FunctionType)):
        # Code made by exec() or in a REPL can claim a library module (exec without
        # __name__ says "builtins"): only what that module really holds counts by version.
        found: Any = sys.modules.get(modname)
        for part in getattr(obj, "__qualname__", "").split("."):
            found = getattr(found, part, None)
            if found is None or part == "<locals>":
                break
        if found is not obj and "<locals>" not in getattr(obj, "__qualname__", ""):
            return None
    return origin


# ---- values -> deterministic text ---------------------------------------------------

def tensor_digest(t: torch.Tensor) -> str:
    """dtype, shape and content.  A quantized tensor is its integer values and its
    quantization parameters; a sparse one its dense values and its layout (the layout
    is named, so a sparse and a dense tensor of equal values differ; strided tensors'
    tokens carry no layout).  The layout is checked before anything reshapes: sparse
    tensors cannot be reshaped."""
    t = t.detach()
    dtype, shape, extra = t.dtype, tuple(t.shape), ""
    if t.is_quantized:
        scheme = t.qscheme()
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            extra = f",{scheme},{t.q_scale()!r},{t.q_zero_point()}"
        else:
            extra = (f",{scheme},{t.q_per_channel_axis()},"
                     f"{tensor_digest(t.q_per_channel_scales())},"
                     f"{tensor_digest(t.q_per_channel_zero_points())}")
        t = t.int_repr()
    if t.layout != torch.strided:
        extra += f",{t.layout}"
        t = t.to_dense()
    if t.device.type not in ("cpu", "cuda"):
        t = t.cpu()
    digest = hash_tensor(t.reshape(1, -1) if t.numel() else t.reshape(1, 0))
    lo, hi = (int(w) & 0xFFFFFFFFFFFFFFFF for w in digest[0].tolist())
    return f"tensor({dtype},{shape},{lo:016x}{hi:016x}{extra})"


class _Walk:
    """One computation of code and value tokens.  It records every module-level
    binding it read (`bindings`) and every dict it read object state from (`dicts`),
    so that the per-call check can watch them."""

    def __init__(self) -> None:
        self.memo: Dict[int, str] = {}
        self.keep: List[Any] = []          # objects whose id() is a memo key
        self.bindings: List[Tuple[dict, str, Any]] = []
        self.fresh = False   # re-read mutable module-level values (revalidate)
        self.dicts: List[dict] = []
        self.active: Set[int] = set()

    # -- code --

    def code_token(self, obj: Any) -> str:
        """A function or class and everything its code reaches."""
        origin = _origin_of(obj)
        name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
        if origin is not None:
            return f"{name}@{origin}"
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        if key in self.active:      # recursion: the name is enough, the body is counted
            return f"{name}@cycle"
        self.active.add(key)
        try:
            if isinstance(obj, type):
                body = self._class_body(obj)
            else:
                body = self._function_body(obj)
        finally:
            self.active.discard(key)
        token = f"{name}:{hashlib.blake2b(body.encode(), digest_size=16).hexdigest()}"
        self.memo[key] = token
        self.keep.append(obj)
        return token

    def _class_body(self, cls: type) -> str:
        parts = []
        for klass in cls.__mro__:
            if klass is object or klass is torch.nn.Module:
                break
            origin = _origin_of(klass)
            if origin is not None:
                parts.append(f"base {klass.__module__}.{klass.__qualname__}@{origin}")
                break
            if "_torchcache_c_wrapper" in vars(klass):
                continue
            source = class_source(klass)
            parts.append(source)
            for attr_name, fn in _functions_of(klass):
                parts.append(f"def {attr_name}: {self._function_body(fn)}")
            if source.endswith("<no source>"):
                # The source text holds the class attributes' values; without it they
                # count as first read (a counter that forward bumps must not re-key).
                for attr_name, value in sorted(vars(klass).items()):
                    if not attr_name.startswith("__") and not _is_function_like(value):
                        parts.append(f"attr {attr_name}="
                                     f"{self._mutable_aware(klass, attr_name, value)}")
        return "\n".join(parts)

    def _function_body(self, fn: Any) -> str:
        fn = inspect.unwrap(fn)
        if not isinstance(fn, types.FunctionType):
            return self.value(fn, 1)
        code = fn.__code__
        parts = [code_digest(code),
                 "defaults:" + self.value(fn.__defaults__, 1),
                 "kwdefaults:" + self.value(fn.__kwdefaults__, 1)]
        for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                contents = cell.cell_contents
            except ValueError:
                contents = None
            parts.append(f"free {name}={self._mutable_aware(cell, name, contents)}")
        names = sorted(_names_of(code))
        namespace = fn.__globals__
        for name in names:
            if name in namespace:
                parts.append(f"global {name}={self._binding(namespace, name, names)}")
        return "\n".join(parts)

    def _binding(self, namespace: dict, name: str, names: Iterable[str] = ()) -> str:
        """A module-level name the code reads.  Rebinding it is always seen.  A mutable
        value (a list, dict, set or object) counts by its contents as first read in
        this process: forward may append to a log list without changing the key, and
        an in-place change is seen by revalidate() (docs/keys.md, section 3)."""
        value = namespace[name]
        self.bindings.append((namespace, name, value))
        return self._mutable_aware(namespace, name, value, names)

    def _mutable_aware(self, holder: Any, name: str, value: Any,
                       names: Iterable[str] = ()) -> str:
        """A value held by a namespace or a closure cell; a mutable one by its contents
        as first read in this process (see _binding)."""
        if not _is_mutable(value):
            return self.value(value, 1, names)
        memo_key = (id(holder), name, id(value))
        known = _mutable_texts.get(memo_key)
        if known is None or self.fresh:
            known = (value, self.value(value, 1, names))
            _mutable_texts[memo_key] = known
        return known[1]

    # -- values --

    def value(self, value: Any, depth: int = 0, names: Iterable[str] = ()) -> str:
        """Deterministic text for a value the outputs may depend on."""
        if isinstance(value, bool) or value is None:
            return repr(value)
        if isinstance(value, _SIMPLE):
            return f"{type(value).__name__}:{value!r}"
        if isinstance(value, torch.Tensor):
            return tensor_digest(value)
        if isinstance(value, enum.Enum):
            return f"enum:{type(value).__module__}.{type(value).__qualname__}.{value.name}"
        if isinstance(value, torch.nn.Module):
            return self.module_value(value)
        if isinstance(value, (type, types.FunctionType)):
            return self.code_token(value)
        if isinstance(value, types.MethodType):
            owner = value.__self__
            owner_text = self.code_token(owner) if isinstance(owner, type) else \
                f"{type(owner).__module__}.{type(owner).__qualname__}"
            return f"method:{owner_text}.{self.code_token(value.__func__)}"
        if isinstance(value, functools.partial):
            return (f"partial:{self.value(value.func, depth + 1)}:"
                    f"{self.value(value.args, depth + 1)}:{self.value(value.keywords, depth + 1)}")
        if isinstance(value, types.ModuleType):
            return self._module_value(value, names)
        if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)) or (
                callable(value) and _origin_of(value) is not None
                and not hasattr(value, "__dict__")):
            mod = getattr(value, "__module__", None) or ""
            return f"builtin:{mod}.{getattr(value, '__qualname__', type(value).__name__)}" \
                f"@{_module_origin(mod) or _PYTHON}"
        if depth > _MAX_DEPTH:
            return f"deep:{type(value).__module__}.{type(value).__qualname__}"
        if isinstance(value, (list, tuple)):
            inner = ",".join(self.value(v, depth + 1) for v in value)
            return f"{type(value).__qualname__}[{inner}]"
        if isinstance(value, dict):
            items = sorted((self.value(k, depth + 1), self.value(v, depth + 1))
                           for k, v in value.items())
            return f"{type(value).__qualname__}{{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
        if isinstance(value, (set, frozenset)):
            return "set{" + ",".join(sorted(self.value(v, depth + 1) for v in value)) + "}"
        return self.object_value(value, depth)

    def _module_value(self, module: types.ModuleType, names: Iterable[str]) -> str:
        origin = _module_origin(module.__name__)
        if origin is not None:
            return f"module:{module.__name__}@{origin}"
        # A user module: the attributes that the code names (`models.Block`) count.
        parts = [f"module:{module.__name__}"]
        namespace = vars(module)
        for name in names:
            if name in namespace:
                parts.append(f"{name}={self._binding(namespace, name)}")
        return ";".join(parts)

    def object_value(self, value: Any, depth: int) -> str:
        """An object by its class and its attributes' contents (a config object, a
        dataclass, a transform with parameters); its repr only when it has no
        attributes to read."""
        cls = type(value)
        head = f"object:{self.code_token(cls)}"
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict):
            self.dicts.append(state)
            items = sorted((k, v) for k, v in state.items() if not _is_function_like(v))
            body = ",".join(f"{k}={self.value(v, depth + 1)}" for k, v in items)
            return f"{head}{{{body}}}"
        slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ())]
        if slots:
            body = ",".join(f"{s}={self.value(getattr(value, s, None), depth + 1)}"
                            for s in sorted(set(slots)))
            return f"{head}{{{body}}}"
        text = repr(value)
        if _ADDRESS.search(text):
            _warn_address(f"{cls.__module__}.{cls.__qualname__}")
            text = _ADDRESS.sub("", text)
        return f"{head}:{text}"

    def module_value(self, module: torch.nn.Module) -> str:
        """A module that appears as a value (init argument, closure, global): its
        structure, classes, flags and attributes, and its weights by content."""
        parts = [instance_state(self, module)]
        for name, t in named_state_tensors(module):
            parts.append(f"{name}={tensor_digest(t)}")
        return "module{" + ";".join(parts) + "}"


def _is_function_like(value: Any) -> bool:
    return isinstance(value, (types.FunctionType, staticmethod, classmethod, property,
                              types.MethodType))


def _names_of(code: types.CodeType) -> Set[str]:
    """Every global and attribute name a code object and its nested code use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_of(const)
    return names


def _const_text(const: Any) -> str:
    if isinstance(const, types.CodeType):
        return "code:" + code_digest(const)
    if isinstance(const, (tuple, list)):
        return "(" + ",".join(_const_text(c) for c in const) + ")"
    if isinstance(const, frozenset):  # iteration order depends on PYTHONHASHSEED
        return "frozenset(" + ",".join(sorted(_const_text(c) for c in const)) + ")"
    return f"{type(const).__name__}:{const!r}"


def code_digest(code: types.CodeType) -> str:
    """Digest of what a code object does: bytecode, constants and names, not its file/lines."""
    h = hashlib.blake2b(digest_size=16)
    for part in (code.co_code, _const_text(code.co_consts), repr(code.co_names),
                 repr(code.co_varnames), repr(code.co_freevars), repr(code.co_cellvars),
                 repr((code.co_argcount, code.co_kwonlyargcount, code.co_flags))):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _functions_of(cls: type) -> Iterable[Tuple[str, Callable]]:
    for name, attr in sorted(vars(cls).items()):
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if isinstance(attr, property):
            for part, fn in (("get", attr.fget), ("set", attr.fset), ("del", attr.fdel)):
                if fn is not None:
                    yield f"{name}.{part}", fn
        elif isinstance(attr, types.FunctionType):
            yield name, attr


_sources: "weakref.WeakKeyDictionary[type, str]" = weakref.WeakKeyDictionary()


def class_source(cls: type) -> str:
    """The class's source text when inspect finds it (once per class object).  The
    bytecode is always counted too: in a notebook or after an edit on disk the text
    linecache returns may not be the code that runs."""
    text = _sources.get(cls)
    if text is None:
        try:
            text = inspect.getsource(cls)
        except (OSError, TypeError):
            text = "<no source>"
        _sources[cls] = text
    return f"class {cls.__module__}.{cls.__qualname__}\n{text}"


# ---- a module instance's state ------------------------------------------------------

def named_state_tensors(module: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """Parameters, buffers and tensors held as plain attributes, of every submodule."""
    out: List[Tuple[str, torch.Tensor]] = []
    seen: Set[int] = set()
    for prefix, m in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for kind, table in (("p", m._parameters), ("b", m._buffers)):
            for name, t in table.items():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    out.append((f"{kind}:{dot}{name}", t))
        for name, value in m.__dict__.items():
            if isinstance(value, torch.Tensor) and id(value) not in seen:
                seen.add(id(value))
                out.append((f"a:{dot}{name}", value))
    return out


def _hooks(m: torch.nn.Module) -> List[Tuple[str, Any]]:
    out = []
    for table in ("_forward_pre_hooks", "_forward_hooks"):
        for hook_id, hook in getattr(m, table, {}).items():
            out.append((f"{table}[{hook_id}]", hook))
    return out


def instance_state(walk: _Walk, root: torch.nn.Module,
                   excluded: "Set[str] | frozenset" = frozenset(),
                   attributes: Optional[Dict[str, str]] = None) -> str:
    """Per submodule: class (code and reach), training flag, hooks, simple-typed
    attributes and config-like objects; parameter and buffer names.  Attributes
    named in `excluded` ("path.name") are left out; `attributes` receives the text
    of every attribute by that name."""
    parts = []
    for prefix, m in root.named_modules(remove_duplicate=False):
        state = m.__dict__
        walk.dicts.extend((state, m._parameters, m._buffers, m._modules))
        walk.dicts.extend(d for d in (getattr(m, "_forward_hooks", None),
                                      getattr(m, "_forward_pre_hooks", None))
                          if isinstance(d, dict))
        attrs = []
        for name in sorted(state):
            if name in _MODULE_INTERNALS or name.startswith("torchcache_"):
                continue
            value = state[name]
            if isinstance(value, torch.Tensor):
                continue    # by content, with the weights
            path = f"{prefix}.{name}" if prefix else name
            text = walk.value(value, 1)
            if attributes is not None:
                attributes[path] = text
            if path not in excluded:
                attrs.append(f"{name}={text}")
        hook_texts = []
        for hook_name, hook in _hooks(m):
            text = walk.value(hook, 1)
            if attributes is not None:
                attributes[f"{prefix}.<{hook_name}>"] = _HOOK + text
            if _HOOK + text not in excluded:
                hook_texts.append(f"{hook_name}={text}")
        hooks = ",".join(hook_texts)
        parts.append(f"[{prefix}] {walk.code_token(type(m))} training={m.training} "
                     f"params={sorted(m._parameters)} buffers={sorted(m._buffers)} "
                     f"hooks={hooks} " + " ".join(attrs))
    for table in ("_global_forward_pre_hooks", "_global_forward_hooks"):
        hooks = getattr(torch.nn.modules.module, table, None)
        if isinstance(hooks, dict):
            walk.dicts.append(hooks)
            parts.append(f"{table}=" + ",".join(walk.value(h, 1) for h in hooks.values()))
    return "\n".join(parts)


def active_dropout(root: torch.nn.Module) -> Optional[str]:
    """The name of a submodule that draws random numbers in this mode, if any."""
    for name, m in root.named_modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            return name or type(m).__qualname__
    return None


# ---- the tracker -------------------------------------------------------------------------

def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16, person=b"tc-module-key")
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def structural_key(init_args: tuple, init_kwargs: dict, settings: dict) -> str:
    """The part fixed at construction: init arguments and digest-changing settings."""
    walk = _Walk()
    return _digest(walk.value(init_args), walk.value(init_kwargs),
                   walk.value(sorted(settings.items())))


def _unique(dicts: Iterable[dict]) -> List[dict]:
    return list({id(d): d for d in dicts}.values())


class KeyTracker:
    """The current key of one module instance (`module`) or function (`function`),
    checked on every call by `current()`.

    For a function, `state_tensors` lists the tensors its closure and defaults hold
    (directly or as module weights); closure cells are compared by identity on each
    call, since rebinding a cell changes no dict.
    """

    def __init__(self, structural: str, *, module: Optional[Callable[[], torch.nn.Module]] = None,
                 function: Optional[types.FunctionType] = None,
                 state_tensors: Optional[Callable[[], List[Tuple[str, torch.Tensor]]]] = None):
        self.structural = structural
        self._module = module
        self._function = function
        self._function_tensors = state_tensors or (lambda: [])
        self._lock = threading.Lock()
        self._state_watch = _C.Watch()
        self._globals_watch = _C.Watch()
        self._bindings: List[Tuple[dict, str, Any]] = []
        self._cells: Tuple[int, ...] = ()
        self._code = self._instance = self._weights = ""
        self._tensor_cache: Dict[str, Tuple[tuple, str]] = {}
        self._key: Optional[str] = None
        self._dirty = True
        self._last_full = 0.0
        self._full_cost = 0.0
        self._call_time = 0.0
        self._attributes: Dict[str, str] = {}
        self._forwards = 0
        self.dropout: Optional[str] = None
        self.full_checks = 0
        self.unseen_changes = 0

    def current(self, grad_enabled: bool) -> str:
        """The key for this call.  Raises TrainableParametersError if a parameter
        requires grad while grad is enabled (a cached output cannot carry gradients)."""
        with self._lock:
            if self._key is None:
                self._recompute(full=True)
            else:
                if self._globals_watch.changed(False):
                    self._check_bindings()
                if self._function is not None and self._cell_ids() != self._cells:
                    self._dirty = True
                moved = self._state_watch.changed(grad_enabled)
                if moved or self._dirty:
                    self._recompute(full=False)
                    moved = self._state_watch.changed(grad_enabled)
                if moved == 3:
                    self._raise_grad()
                if self._due():
                    self._recompute(full=True, periodic=True)
            key = self._key
        assert key is not None
        return key

    def spent(self, seconds: float) -> None:
        """Time spent in one cached call: the periodic full check costs at most
        FULL_CHECK_COST_SHARE of it."""
        self._call_time += seconds

    @property
    def forward_written(self) -> Set[str]:
        """Attributes (by path) that forward assigns, learned per decorated class."""
        module = self._module() if self._module is not None else None
        if module is None:
            return set()
        return _forward_written.setdefault(type(module), set())

    def after_forward(self) -> bool:
        """Called after forward ran: attributes that forward itself assigned (a call
        counter, a cache of its own) are results of the computation, not inputs, and
        are left out of the key from now on; anything else that moved is recomputed
        at the next call.  True when attributes were newly left out."""
        module = self._module() if self._module is not None else None
        with self._lock:
            # A list or dict that forward appends to moves no dict watched here, so
            # the first forwards of each instance compare contents.
            self._forwards += 1
            learning = self._forwards <= _LEARNING_FORWARDS
            moved = self._state_watch.changed(False) == 1
            if not learning and not moved:
                return False
            if moved:
                self._dirty = True
            if module is None:
                return False
            now: Dict[str, str] = {}
            instance_state(_Walk(), module, attributes=now)
            # An attribute forward changed or added counts by its path; a hook it installed
            # (transformers adds output-capturing hooks at the first forward) by its code.
            written = {path for path, text in now.items()
                       if self._attributes.get(path) != text and not text.startswith(_HOOK)}
            written |= {text for path, text in now.items()
                        if text.startswith(_HOOK) and path not in self._attributes}
            new = written - self.forward_written
            if new:
                logger.info("attributes assigned by forward are left out of the key: %s",
                            ", ".join(sorted(new)))
                self.forward_written.update(new)
                self._dirty = True
            return bool(new)

    def invalidate(self) -> None:
        """Recompute at the next call (the module was moved or cast)."""
        self._dirty = True

    def revalidate(self) -> bool:
        """Recompute every part now, weights by content; True if the key changed."""
        with self._lock:
            before = self._key
            self._recompute(full=True, fresh=True)
            return before is not None and before != self._key

    @property
    def parts(self) -> Dict[str, str]:
        """Digests of the key's parts (for tests and bug reports)."""
        return {"structural": self.structural, "code": _digest(self._code),
                "instance": _digest(self._instance), "weights": self._weights}

    # -- internals --

    def _cell_ids(self) -> Tuple[int, ...]:
        fn = self._function
        ids = []
        for cell in (fn.__closure__ or ()) if fn is not None else ():
            try:
                ids.append(id(cell.cell_contents))
            except ValueError:
                ids.append(0)
        return tuple(ids)

    def _due(self) -> bool:
        if time.monotonic() - self._last_full < FULL_CHECK_SECONDS:
            return False
        return self._call_time * FULL_CHECK_COST_SHARE >= self._full_cost

    def _check_bindings(self) -> None:
        for namespace, name, value in self._bindings:
            if namespace.get(name, _MISSING) is not value:
                self._dirty = True
                return
        self._watch_globals()

    def _watch_globals(self) -> None:
        """Snapshot the module namespaces the bindings were read from."""
        self._globals_watch.reset(_unique(n for n, _, _ in self._bindings), [], [],
                                  _VERSION_DESCR, _REQUIRES_GRAD_DESCR)

    def _recompute(self, full: bool, periodic: bool = False, fresh: bool = False) -> None:
        start = time.perf_counter()
        walk = _Walk()
        walk.fresh = fresh
        module = self._module() if self._module is not None else None
        if module is not None:
            code = ""
            attributes: Dict[str, str] = {}
            instance = instance_state(walk, module, self.forward_written, attributes)
            self._attributes = attributes
            tensors = named_state_tensors(module)
        else:
            code = walk.code_token(self._function)
            instance = ""
            tensors = self._function_tensors()
        weights = self._weights_digest(tensors, full)
        if periodic and (code, instance, weights) != (self._code, self._instance, self._weights):
            self.unseen_changes += 1
            logger.warning(
                "the periodic check found that the cached module changed without a visible "
                "write (weights written through .data, a storage shared with another module, "
                "or code patched in place); outputs computed since the previous check may be "
                "stored under the old key. Call cache_instance.revalidate() after such writes")
        self._code, self._instance, self._weights = code, instance, weights
        self._bindings = walk.bindings
        self._cells = self._cell_ids()
        self.dropout = active_dropout(module) if module is not None else None
        self._key = _digest(self.structural, code, instance, weights)
        self._dirty = False
        # Parameters are what requires_grad_() turns on; buffers and attributes are
        # version-watched only.
        params = [t for _, t in tensors if module is None or isinstance(t, torch.nn.Parameter)]
        self._state_watch.reset(_unique(walk.dicts), [t.detach() for _, t in tensors], params,
                                _VERSION_DESCR, _REQUIRES_GRAD_DESCR)
        self._watch_globals()
        if full:
            self.full_checks += 1
            self._last_full = time.monotonic()
            self._full_cost = time.perf_counter() - start
            self._call_time = 0.0

    def _weights_digest(self, tensors: List[Tuple[str, torch.Tensor]], full: bool) -> str:
        """Content digest of the tensors; a tensor whose version, storage, shape, dtype
        and device are unchanged is not read again unless `full`."""
        h = hashlib.blake2b(digest_size=16)
        cache: Dict[str, Tuple[tuple, str]] = {}
        for name, t in tensors:
            # A sparse tensor has no single storage pointer or strides: no signature,
            # digested every time.
            signature = None if t.layout != torch.strided else (
                t._version, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device)
            known = self._tensor_cache.get(name)
            digest = known[1] if known is not None and signature is not None and \
                known[0] == signature and not full else tensor_digest(t)
            cache[name] = (signature, digest)
            h.update(f"{name}={digest};".encode())
        self._tensor_cache = cache
        return h.hexdigest()

    def _raise_grad(self) -> None:
        module = self._module() if self._module is not None else None
        named = named_state_tensors(module) if module is not None else self._function_tensors()
        names = [n.split(":", 1)[-1] for n, t in named if t.requires_grad] or ["?"]
        raise TrainableParametersError(
            f"parameter {names[0]!r} requires grad: a cached output cannot carry gradients "
            "to it. Freeze it with requires_grad_(False) or call under torch.no_grad()")


_MISSING = object()
_HOOK = "<hook>"
# How many forward runs of an instance compare every attribute's contents afterwards.
_LEARNING_FORWARDS = 4
_forward_written: "weakref.WeakKeyDictionary[type, Set[str]]" = weakref.WeakKeyDictionary()
# Texts of mutable module-level values, as first read in this process (see _binding).
_mutable_texts: Dict[Tuple[int, str, int], Tuple[Any, str]] = {}


def _is_mutable(value: Any) -> bool:
    if isinstance(value, (_SIMPLE, tuple, frozenset, enum.Enum, type, types.FunctionType,
                          types.ModuleType, types.BuiltinFunctionType, torch.nn.Module,
                          torch.Tensor)):
        return False
    return isinstance(value, (list, dict, set, bytearray)) or hasattr(value, "__dict__")
