"""@torchcache(...): the API surface, for nn.Module subclasses and plain functions.

Every keyword of torchcache 0.4.1 is accepted with the same meaning and default,
except subsample_count, whose default None hashes every byte of each item.
`torchcache_<name>` attributes set on an instance in __init__ override the
decorator's keywords for that instance; `torchcache_enabled = False` turns the
cache off for it.  Each instance gets its own key (keys.py); instances with equal
keys share one store.  Options are checked when decorating (and, for attribute
overrides, when the instance is built), each error naming the option.

A decorated module is an ordinary nn.Module: copy.deepcopy, pickle and torch.save
copy its options and rebuild the cache around the copy (the copy's key is computed
from the copy, so a copy whose weights are changed gets its own entries).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import types
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

import torch

from . import _C
from ._compat import compiler_disable
from .cache import ModuleCache
from .keys import KeyTracker, TrainableParametersError, named_state_tensors, structural_key

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
    # issue 15 (docs/remote.md): an object store behind the persistent directory.
    "persistent_remote": None,
    "remote_refresh_s": 5.0,
}
_PREFIX = "torchcache_"
# Settings that change what is stored under a key; the rest only change where/how.
_KEY_SETTINGS = ("subsample_count", "cache_dtype")


def torchcache(
    _no_positional: None = None,
    /,
    *,
    memory_cache_device: Union[str, torch.device, None] = "cpu",
    subsample_count: Optional[int] = None,
    persistent: bool = False,
    persistent_cache_dir: Union[str, "os.PathLike[str]", None] = None,
    persistent_module_hash: Optional[str] = None,
    max_persistent_cache_size: Union[int, float] = int(10e9),
    max_memory_cache_size: Union[int, float] = int(1e9),
    zstd_compression: bool = False,
    zstd_compression_level: int = 3,
    zstd_compression_threads: int = 1,
    cache_dtype: Optional[torch.dtype] = None,
    use_mmap_on_load: bool = False,
    enabled: bool = True,
    persistent_remote: Optional[str] = None,
    remote_refresh_s: Union[int, float] = 5.0,
) -> Callable[[T], T]:
    """Cache the output of an nn.Module subclass's forward (or of a function) per batch item.

    Write it with parentheses: ``@torchcache()`` or ``@torchcache(persistent=True, ...)``.

    Args:
        memory_cache_device: where the in-memory tier (``persistent=False``) keeps
            outputs: ``"cpu"``, a CUDA device, or None for the inputs' device.
        subsample_count: None hashes every byte of each item; N hashes a fixed sample
            of N elements per item (faster, blind to changes elsewhere).
        persistent: keep outputs in a directory shared by every process that opens it.
        persistent_cache_dir: that directory's parent; None: a private temporary
            directory, removed at exit.
        persistent_module_hash: use this string as the module key instead of the
            computed one (you take over invalidation).
        max_persistent_cache_size: bytes this session may write to the directory;
            past it new outputs are not stored; 0 stores nothing.
        max_memory_cache_size: the same for the in-memory tier; 0 stores nothing.
        zstd_compression: compress stored records with zstd (persistent only).
        zstd_compression_level: zstd level.
        zstd_compression_threads: zstd worker threads.
        cache_dtype: store floating-point outputs in this floating dtype; outputs
            still come back in the module's dtype.
        use_mmap_on_load: accepted for compatibility; the store always uses mmap.
        enabled: False calls forward directly.
        persistent_remote: an object store behind the persistent directory, which
            becomes its read-through cache: "s3://bucket/prefix", "gs://...",
            "az://...", or "file:///path" (docs/remote.md). Needs persistent=True and
            ``pip install "torchcache_c[remote]"``; credentials and endpoint come from
            the client's environment variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...).
        remote_refresh_s: a miss lists the remote for other writers' new chunks at most
            this often (seconds; 0: at every miss).
    """
    if _no_positional is not None:
        raise TypeError(
            "torchcache takes keyword arguments only; write @torchcache() with parentheses")
    options = validate_options(dict(
        memory_cache_device=memory_cache_device, subsample_count=subsample_count,
        persistent=persistent, persistent_cache_dir=persistent_cache_dir,
        persistent_module_hash=persistent_module_hash,
        max_persistent_cache_size=max_persistent_cache_size,
        max_memory_cache_size=max_memory_cache_size, zstd_compression=zstd_compression,
        zstd_compression_level=zstd_compression_level,
        zstd_compression_threads=zstd_compression_threads, cache_dtype=cache_dtype,
        use_mmap_on_load=use_mmap_on_load, enabled=enabled,
        persistent_remote=persistent_remote, remote_refresh_s=remote_refresh_s), "torchcache()")

    def decorate(target: T) -> T:
        if isinstance(target, type) and issubclass(target, torch.nn.Module):
            return _wrap_class(target, options)  # type: ignore[return-value]
        if isinstance(target, types.FunctionType):
            return _wrap_function(target, options)  # type: ignore[return-value]
        raise TypeError(f"@torchcache() decorates nn.Module subclasses and plain functions, "
                        f"not {target!r}")

    return decorate


# ---- options ----------------------------------------------------------------------------

def _bad(where: str, name: str, value: Any, expected: str) -> TypeError:
    return TypeError(f"{where}: {name} must be {expected}, not {value!r}")


def validate_options(options: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Check every option's type and range; returns them normalised (sizes as int)."""
    out = dict(options)
    for name in ("persistent", "zstd_compression", "use_mmap_on_load", "enabled"):
        if not isinstance(out[name], bool):
            raise _bad(where, name, out[name], "True or False")
    count = out["subsample_count"]
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise _bad(where, "subsample_count", count, "None or an int >= 0")
    for name in ("max_persistent_cache_size", "max_memory_cache_size"):
        size = out[name]
        if isinstance(size, bool) or not isinstance(size, (int, float)) or \
                not math.isfinite(size) or size < 0:
            raise _bad(where, name, size, "a number of bytes >= 0 (0 stores nothing), "
                       "e.g. 1e9 or int(1e9)")
        out[name] = int(size)
    device = out["memory_cache_device"]
    if device is not None:
        if not isinstance(device, (str, torch.device)):
            raise _bad(where, "memory_cache_device", device,
                       "a device such as 'cpu' or 'cuda:0', a torch.device, or None")
        try:
            torch.device(device)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{where}: memory_cache_device {device!r} is not a device "
                             f"({exc}); use 'cpu', 'cuda', 'cuda:N' or None") from None
    dtype = out["cache_dtype"]
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise _bad(where, "cache_dtype", dtype,
                   "None or a floating torch.dtype such as torch.float16 or torch.bfloat16 "
                   "(an integer dtype would truncate outputs)")
    cache_dir = out["persistent_cache_dir"]
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise _bad(where, "persistent_cache_dir", cache_dir, "None, a str or a path")
    override = out["persistent_module_hash"]
    if override is not None and (not isinstance(override, str) or not override or
                                 override in (".", "..") or "/" in override or
                                 os.sep in override or "\0" in override):
        raise _bad(where, "persistent_module_hash", override,
                   "None or a non-empty str usable as a directory name")
    level = out["zstd_compression_level"]
    if isinstance(level, bool) or not isinstance(level, int) or not -(1 << 17) <= level <= 22:
        raise _bad(where, "zstd_compression_level", level, "an int from -131072 to 22")
    threads = out["zstd_compression_threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise _bad(where, "zstd_compression_threads", threads, "an int >= 0")
    if out["zstd_compression"] and not out["persistent"]:
        raise ValueError("Cannot use zstd compression without persistent cache")
    # issue 15: the object-store tier (remote.py, docs/remote.md).
    refresh = out.get("remote_refresh_s", 5.0)
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or \
            not math.isfinite(refresh) or refresh < 0:
        raise _bad(where, "remote_refresh_s", refresh, "a number of seconds >= 0")
    if out.get("persistent_remote") is not None:
        from .remote import validate_url

        validate_url(out["persistent_remote"], where)
        if not out["persistent"]:
            raise ValueError(f"{where}: persistent_remote needs persistent=True (the local "
                             "persistent directory is the remote's read-through cache)")
    return out


def _instance_options(module: torch.nn.Module, options: Dict[str, Any]) -> Dict[str, Any]:
    opts = dict(options)
    overridden = False
    for name in dir(module):
        if name.startswith(_PREFIX):
            key = name[len(_PREFIX):]
            if key not in DEFAULTS:
                raise TypeError(f"unknown torchcache attribute {name!r}; accepted: "
                                f"{', '.join(_PREFIX + k for k in DEFAULTS)}")
            opts[key] = getattr(module, name)
            overridden = True
    return validate_options(opts, type(module).__qualname__) if overridden else opts


def _settings(options: Dict[str, Any]) -> Dict[str, Any]:
    settings = {k: options[k] for k in _KEY_SETTINGS}
    # A new hash definition must never read entries keyed by the old one (docs/hash.md, 9).
    settings["hash"] = _C.build_info()["hash"]
    return settings


# ---- torch.compile ------------------------------------------------------------------------

_is_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling",
                                            lambda: False)


def _compiler_guard(fn: Callable) -> Callable:
    """fn, kept out of torch.compile's graphs (the cache reads tensor bytes and runs
    forward on a subset of rows: it cannot be traced).  The guard is built once, here:
    torch.compiler.disable's wrapper switches the frame evaluator on every call
    (~1 us), so eager calls go straight to fn and only a call that dynamo is tracing,
    where is_compiling() is True, takes the disabled version (a graph break)."""
    disabled = compiler_disable(fn)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _is_compiling():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return guarded


# ---- classes ----------------------------------------------------------------------------

def _init_arguments(module_class: type, instance: Any, args: tuple,
                    kwargs: dict) -> Tuple[tuple, dict]:
    """The init arguments as __init__ receives them, by parameter name with defaults
    filled in, so that Lin(3), Lin(d=3) and Lin() (d=3 by default) get one key. An
    __init__ whose signature cannot be read keys the arguments as written."""
    try:
        bound = inspect.signature(module_class.__init__).bind(instance, *args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs
    bound.apply_defaults()
    named = dict(bound.arguments)
    named.pop(next(iter(named)), None)  # self
    return (), named


def _wrap_class(module_class: type, options: Dict[str, Any]) -> type:
    class Cached(module_class):  # type: ignore[misc, valid-type]
        _torchcache_c_wrapper = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opts = _instance_options(self, options)
            if opts["enabled"]:
                frozen_check(self)
            structural = structural_key(*_init_arguments(module_class, self, args, kwargs),
                                        _settings(opts))
            _attach_cache(self, opts, structural)

        @_compiler_guard
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.cache_instance.call(super().forward, args, kwargs, self.training)

        def _apply(self, *args: Any, **kwargs: Any) -> Any:
            # .to(), .half(), .cuda() may replace weights through `.data`, which no
            # version counter sees: recompute the key at the next call.
            result = super()._apply(*args, **kwargs)
            cache = self.__dict__.get("cache_instance")
            if cache is not None:
                cache.keys.invalidate()
            return result

        def __getstate__(self) -> Dict[str, Any]:
            state = super().__getstate__() if hasattr(super(), "__getstate__") \
                else self.__dict__.copy()
            state = dict(state)
            cache = state.pop("cache_instance", None)
            if cache is not None:
                state["_torchcache_c_rebuild"] = cache.rebuild_state()
            return state

        def __setstate__(self, state: Dict[str, Any]) -> None:
            state = dict(state)
            rebuild = state.pop("_torchcache_c_rebuild", None)
            super().__setstate__(state)
            if rebuild is not None:
                _attach_cache(self, rebuild["options"], rebuild["structural"],
                              rebuild.get("private_dir"))

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(Cached, attr, getattr(module_class, attr))
    if module_class.__init__ is not torch.nn.Module.__init__:
        functools.update_wrapper(Cached.__init__, module_class.__init__,  # type: ignore
                                 assigned=("__doc__",), updated=())
    return Cached


def _attach_cache(module: torch.nn.Module, options: Dict[str, Any], structural: str,
                  private_dir: Optional[str] = None) -> None:
    ref = weakref.ref(module)
    keys = KeyTracker(structural, module=ref)  # type: ignore[arg-type]
    qualname = f"{type(module).__module__}.{type(module).__qualname__}"
    # Plain attribute (not a submodule): bypass nn.Module.__setattr__'s bookkeeping.
    module.__dict__["cache_instance"] = ModuleCache(
        options, keys, qualname=qualname, private_dir=private_dir)


def frozen_check(module: torch.nn.Module) -> None:
    """torchcache asserts this too: a cached output cannot carry gradients to parameters."""
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    if trainable:
        raise TrainableParametersError(
            f"{type(module).__qualname__} has parameters that require grad "
            f"({', '.join(trainable[:5])}{', ...' if len(trainable) > 5 else ''}); a cached "
            "output cannot carry gradients. Freeze them in __init__, e.g. "
            "self.requires_grad_(False), or set torchcache_enabled = False")


# ---- functions --------------------------------------------------------------------------

def _wrap_function(fn: types.FunctionType, options: Dict[str, Any]) -> Callable:
    structural = structural_key((), {}, _settings(options))
    keys = KeyTracker(structural, function=fn,
                      state_tensors=functools.partial(_closure_tensors, fn))
    cache = ModuleCache(dict(options), keys, qualname=f"{fn.__module__}.{fn.__qualname__}")

    @functools.wraps(fn)
    @_compiler_guard
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return cache.call(fn, args, kwargs)

    wrapper.cache_instance = cache  # type: ignore[attr-defined]
    return wrapper


def _cells(fn: types.FunctionType) -> List[Tuple[str, Any]]:
    out = []
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
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
            out.append((str(name), value))
        elif isinstance(value, torch.nn.Module):
            out += [(f"{name}.{n}", t) for n, t in named_state_tensors(value)]
    return out


__all__ = ["torchcache", "TrainableParametersError"]
