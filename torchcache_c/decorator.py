"""@torchcache(...): the API surface, for nn.Module subclasses and plain functions.

Every keyword of torchcache 0.4.1 is accepted with the same meaning and default,
except subsample_count, whose default None hashes every byte of each item.
`torchcache_<name>` attributes set on an instance in __init__ override the
decorator's keywords for that instance; `torchcache_enabled = False` turns the
cache off for it.  Each instance gets its own key (code, init arguments,
parameters and buffers); instances with equal keys share one store.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Dict, List, Tuple, TypeVar

import torch

from .cache import ModuleCache
from . import _C
from ._compat import compiler_disable
from .fingerprint import canonical, class_code_text, function_code_text, structural_key

T = TypeVar("T")

DEFAULTS: Dict[str, Any] = {
    "memory_cache_device": "cpu",
    "subsample_count": None,
    "persistent": False,
    "persistent_cache_dir": None,
    "persistent_module_hash": None,
    "max_persistent_cache_size": int(10e9),
    "max_memory_cache_size": int(1e9),
    "zstd_compression": False,
    "zstd_compression_level": 3,
    "zstd_compression_threads": 1,
    "cache_dtype": None,
    "use_mmap_on_load": False,
    "enabled": True,
}
_PREFIX = "torchcache_"
# Settings that change what is stored under a key; the rest only change where/how.
_KEY_SETTINGS = ("subsample_count", "cache_dtype")


def torchcache(*args: Any, **kwargs: Any) -> Callable[[T], T]:
    """Cache the output of an nn.Module subclass's forward (or of a function) per batch item.

    Use it with parentheses: ``@torchcache()`` or ``@torchcache(persistent=True, ...)``.
    """
    if args:
        raise TypeError(
            "torchcache takes keyword arguments only; write @torchcache() with parentheses")
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"torchcache() got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"accepted: {', '.join(DEFAULTS)}")
    options = {**DEFAULTS, **kwargs}

    def decorate(target: T) -> T:
        if isinstance(target, type) and issubclass(target, torch.nn.Module):
            return _wrap_class(target, options)  # type: ignore[return-value]
        if isinstance(target, types.FunctionType):
            return _wrap_function(target, options)  # type: ignore[return-value]
        raise TypeError(f"@torchcache() decorates nn.Module subclasses and plain functions, "
                        f"not {target!r}")

    return decorate


def _structural(code_text: str, args: tuple, kwargs: dict, options: dict) -> str:
    settings = {k: options[k] for k in _KEY_SETTINGS}
    # A new hash definition must never read entries keyed by the old one (docs/hash.md, 9).
    settings["hash"] = _C.build_info()["hash"]
    return structural_key(code_text, args, kwargs, settings)


def _wrap_class(module_class: type, options: Dict[str, Any]) -> type:
    class Cached(module_class):  # type: ignore[misc, valid-type]
        _torchcache_c_wrapper = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opts = dict(options)
            for name in dir(self):
                if name.startswith(_PREFIX):
                    key = name[len(_PREFIX):]
                    if key not in DEFAULTS:
                        raise TypeError(f"unknown torchcache attribute {name!r}; accepted: "
                                        f"{', '.join(_PREFIX + k for k in DEFAULTS)}")
                    opts[key] = getattr(self, name)
            if opts["enabled"]:
                frozen_check(self)
            code = class_code_text(type(self), skip=lambda c: "_torchcache_c_wrapper" in vars(c))
            self.cache_instance = ModuleCache(
                opts, _structural(code, args, kwargs, opts), self._torchcache_state)

        def _torchcache_state(self) -> List[Tuple[str, torch.Tensor]]:
            return list(self.named_parameters()) + list(self.named_buffers())

        @compiler_disable
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.cache_instance.call(super().forward, args, kwargs, self.training)

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(Cached, attr, getattr(module_class, attr))
    return Cached


def frozen_check(module: torch.nn.Module) -> None:
    """torchcache asserts this too: a cached output cannot carry gradients to parameters."""
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"{type(module).__qualname__} has parameters that require grad "
            f"({', '.join(trainable[:5])}{', ...' if len(trainable) > 5 else ''}); a cached "
            "output cannot carry gradients. Freeze them in __init__, e.g. "
            "self.requires_grad_(False), or set torchcache_enabled = False")


def _wrap_function(fn: types.FunctionType, options: Dict[str, Any]) -> Callable:
    cache = ModuleCache(dict(options), _structural(function_code_text(fn), (), {}, options),
                        functools.partial(_closure_tensors, fn),
                        functools.partial(_closure_values, fn))

    @functools.wraps(fn)
    @compiler_disable
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return cache.call(fn, args, kwargs)

    wrapper.cache_instance = cache  # type: ignore[attr-defined]
    return wrapper


def _cells(fn: types.FunctionType) -> List[Tuple[str, Any]]:
    names = fn.__code__.co_freevars
    out = []
    for name, cell in zip(names, fn.__closure__ or ()):
        try:
            out.append((name, cell.cell_contents))
        except ValueError:  # an empty cell
            out.append((name, None))
    return out


def _closure_tensors(fn: types.FunctionType) -> List[Tuple[str, torch.Tensor]]:
    """Tensors a function closes over or takes as defaults (directly or as a module's
    parameters and buffers): their contents are part of its key, re-read on change."""
    out: List[Tuple[str, torch.Tensor]] = []
    defaults = list(enumerate(fn.__defaults__ or ())) + sorted((fn.__kwdefaults__ or {}).items())
    for name, value in _cells(fn) + [(f"default:{k}", v) for k, v in defaults]:
        if isinstance(value, torch.Tensor):
            out.append((name, value))
        elif isinstance(value, torch.nn.Module):
            out += [(f"{name}.{n}", t) for n, t in value.named_parameters()]
            out += [(f"{name}.{n}", t) for n, t in value.named_buffers()]
    return out


def _is_simple(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_is_simple(v) for v in value)
    return isinstance(value, (int, float, str, bool, type(None), torch.dtype, types.FunctionType))


def _closure_values(fn: types.FunctionType) -> str:
    """Simple closure values, read at each call since cells can be rebound.

    Tensors, and the parameters and buffers of modules, are tracked by content
    (`_closure_tensors`); modules also count by their class code and training flag;
    other objects (a list that collects logs, a config object) count by type only.
    """
    parts = []
    for name, value in _cells(fn):
        if isinstance(value, torch.Tensor):
            continue
        if isinstance(value, torch.nn.Module):
            parts.append(f"{name}={canonical(value)}")
        elif _is_simple(value):
            parts.append(f"{name}={canonical(value)}")
        else:
            parts.append(f"{name}=object:{type(value).__qualname__}")
    return ";".join(parts)

