"""One cached call: gather inputs -> hash -> lookup -> forward misses -> store -> assemble.

Item key = hash_tensor(stack([context digest, digest of input 1, ..., input k]))
over a (B, k+1, 2) int64 tensor: one C call per input and one for the combination,
no Python loop over items.  The context digest covers the module hash, training
flag, autocast state and the non-tensor arguments with their names/positions.
Each output leaf j is one store record per item, keyed item_key XOR leaf_constant(j).
The output layout (nesting and leaf dtypes) is remembered per context and written
to a JSON sidecar beside a persistent store, so that an all-hit batch in a fresh
process can be answered without running forward.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import _C
from ._compat import any_autocast, autocast_state
from .tiers import DeviceTier, HostTier
from .hashing import hash_tensor
from .keys import KeyTracker
from .meta import touch_module_dir
from .sidecar import read_json_validated, write_json_atomic
from .structure import (LayoutUnavailable, flatten_inputs, flatten_output, index_inputs,
                        leaf_paths, unflatten_output)

logger = logging.getLogger("torchcache_c")

# Layout sidecars: -1 had tensors, tuples, lists and dicts; -2 adds the nodes of
# structure.py (ModelOutput, dataclasses, namedtuples, mappings, constants).
_LAYOUT_FORMAT = "torchcache_c-layout-2"
_LAYOUT_FORMATS = ("torchcache_c-layout-1", _LAYOUT_FORMAT)

# DLPack (code, bits) of every torch dtype that can be stored; names that an older
# torch lacks are skipped.
_DLPACK_CODES = {
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64),
    "float16": (2, 16), "float32": (2, 32), "float64": (2, 64), "bfloat16": (4, 16),
    "complex32": (5, 32), "complex64": (5, 64), "complex128": (5, 128), "bool": (6, 8),
    "float8_e4m3fn": (10, 8), "float8_e4m3fnuz": (11, 8), "float8_e5m2": (12, 8),
    "float8_e5m2fnuz": (13, 8), "float8_e8m0fnu": (14, 8),
}
_DTYPE_NAMES = {name: getattr(torch, name) for name in _DLPACK_CODES if hasattr(torch, name)}
_DLPACK_DTYPES = {_DLPACK_CODES[name]: dt for name, dt in _DTYPE_NAMES.items()}
_DTYPE_NAME_OF = {dt: name for name, dt in _DTYPE_NAMES.items()}


def _dtype_from_word(word: int) -> torch.dtype:
    code, bits = word & 0xFF, (word >> 8) & 0xFF
    try:
        return _DLPACK_DTYPES[(code, bits)]
    except KeyError:
        raise RuntimeError(
            f"cache record has an unsupported dtype (DLPack {code}/{bits})") from None


def _text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _digest_pair(raw: bytes) -> torch.Tensor:
    """A 16-byte digest as a (1, 2) int64 tensor."""
    return torch.tensor([[int.from_bytes(raw[:8], "little", signed=True),
                          int.from_bytes(raw[8:], "little", signed=True)]], dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _leaf_constants(n: int) -> bytes:
    """What output leaf j's keys are XORed with, for j < n: 16 bytes each."""
    return b"".join(_text_digest(f"torchcache_c output leaf {j}") for j in range(n))


@functools.lru_cache(maxsize=None)
def _leaf_constant(leaf: int) -> torch.Tensor:
    """Leaf j's constant as a (1, 2) int64 tensor (read-only, shared by every call)."""
    return _digest_pair(_leaf_constants(leaf + 1)[16 * leaf:])


def _leaf_keys(keys: torch.Tensor, leaf: int) -> torch.Tensor:
    return (keys ^ _leaf_constant(leaf)).contiguous()


def _resolved(t: torch.Tensor) -> torch.Tensor:
    """A tensor with a lazy conjugate or negation bit, materialized (as hash_tensor does)."""
    return t.detach().resolve_conj().resolve_neg()


def _as_dtype(t: torch.Tensor, name: str) -> torch.Tensor:
    dtype = _DTYPE_NAMES[name]
    return t if t.dtype == dtype else t.to(dtype)


# torch's DLPack exporter and importer as C functions (Tensor.__dlpack__ and
# torch.from_dlpack add ~10 us of Python checks per call; the shim makes the checks
# that matter itself: no grad to carry, no conjugate/negation bit).
_C._set_tensor_exporter(torch.utils.dlpack.to_dlpack)
_from_capsule = getattr(torch._C, "_from_dlpack", torch.utils.dlpack.from_dlpack)
_CPU = torch.device("cpu")


class _Found:
    """What one call's keys found: the item keys (bytes from the C path, a (B, 2) int64
    tensor from the step path), how many rows hit, the rows to compute (`miss`: an
    int64 index tensor, None when every row misses; `miss_rows`: the same as bytes on
    the C path) and, when some rows hit, the full-batch outputs with the hit rows
    filled (in the layout's dtypes)."""

    __slots__ = ("keys", "hits", "miss", "miss_rows", "leaves")

    def __init__(self, keys: Any, hits: int):
        self.keys = keys
        self.hits = hits
        self.miss: Optional[torch.Tensor] = None
        self.miss_rows: Optional[bytes] = None
        self.leaves: List[torch.Tensor] = []


# ---- stores shared by every cache instance of this process -----------------------

class _StoreHandle:
    """One open store, the lock that serializes its use between threads, and the
    output layouts (per context digest) of the records in it."""

    def __init__(self, store: Any):
        self.store = store
        # The C store behind a HostTier (the one-call path of csrc/call.c), else None.
        self.c_store = store.store if isinstance(store, HostTier) else None
        self.lock = threading.Lock()
        self.layouts: Dict[str, dict] = {}
        # issue 15 hook: the object-store tier behind this directory (remote.py), or None.
        self.remote: Any = None


_open_stores: "weakref.WeakValueDictionary[tuple, _StoreHandle]" = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
_private_dir: Optional[Path] = None
_caches: "weakref.WeakSet[ModuleCache]" = weakref.WeakSet()
_warned_process: set = set()
# Whether this process has yet to ask if it is a DataLoader worker (once per process:
# a worker is a new process, and a forked child asks again).
_worker_unchecked = True
# A miss scans the directory for other processes' records before forward runs, every
# time: a rank that asks after a barrier must see what the others stored before it.
# A scan costs a readdir and one fstat per segment, far less than a forward pass.
_REFRESH_MS = 0
# Context digests remembered per cache instance (cleared when full).
_CONTEXTS_KEPT = 1024


def _reinit_locks_in_child() -> None:
    """A forked child has only the forking thread: a lock another thread held at
    the fork would never be released.  The C store makes fork consistent for its
    own state (csrc/store.c); these Python locks only serialize calls."""
    global _registry_lock, _worker_unchecked
    _registry_lock = threading.Lock()
    _worker_unchecked = True
    for handle in list(_open_stores.values()):
        handle.lock = threading.Lock()
    for cache in list(_caches):
        cache._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_locks_in_child)


def _private_cache_dir() -> Path:
    """A temporary parent directory (mode 0700) for persistent=True without a directory."""
    global _private_dir
    with _registry_lock:
        if _private_dir is None:
            _private_dir = Path(tempfile.mkdtemp(prefix="torchcache_c-"))
            atexit.register(_remove_private_dir, _private_dir, os.getpid())
        return _private_dir


def _remove_private_dir(path: Path, owner_pid: int) -> None:
    # A forked child (os.fork, then a normal exit) inherits this handler; the
    # directory belongs to the process that made it and may still be in use.
    if os.getpid() != owner_pid:
        return
    for key, handle in list(_open_stores.items()):
        if key[0] == "dir" and Path(key[1]).parent == path:
            handle.store.close()
    shutil.rmtree(path, ignore_errors=True)
    logger.info("removed temporary cache directory %s", path)


def _open_store(key: tuple, opener: Callable[[], Any]) -> _StoreHandle:
    with _registry_lock:
        handle = _open_stores.get(key)
        if handle is None:
            handle = _StoreHandle(opener())
            _open_stores[key] = handle
        return handle


def _tier_device(option: Any, input_device: torch.device) -> Optional[torch.device]:
    """The device of an on-device memory tier, or None for the C arena in host memory.

    ``memory_cache_device`` "cpu" (the default) keeps outputs in host memory; a CUDA
    device keeps them there; None means the device of the inputs, as in torchcache.
    """
    device = input_device if option is None else torch.device(option)
    return None if device.type == "cpu" else device


# ---- output layouts ------------------------------------------------------------

def _layout_is_valid(data: Any) -> bool:
    """The layout sidecar's schema: a known format, dtype names, and a spec whose
    tensor leaves match them (structure.py's spec, docs/shim.md)."""
    if not isinstance(data, dict) or data.get("format") not in _LAYOUT_FORMATS:
        return False
    dtypes = data.get("dtypes")
    if not isinstance(dtypes, list) or not all(d in _DTYPE_NAMES for d in dtypes):
        return False
    try:
        return len(leaf_paths(data.get("spec"))) == len(dtypes)
    except (LayoutUnavailable, TypeError, KeyError, ValueError, AttributeError):
        return False


# ---- the cache of one module instance or function ----------------------------------

class ModuleCache:
    """Per-instance cache state; exposed as ``module.cache_instance``."""

    def __init__(self, options: Dict[str, Any], keys: KeyTracker, *, qualname: str,
                 private_dir: Optional[str] = None):
        self.options = options
        self.keys = keys
        self.qualname = qualname
        self._private_dir = Path(private_dir) if private_dir else None
        self.enabled: bool = bool(options["enabled"])
        self.persistent: bool = bool(options["persistent"])
        self.subsample_count: Optional[int] = options["subsample_count"]
        self.cache_dtype: Optional[torch.dtype] = options["cache_dtype"]
        self._override: Optional[str] = options["persistent_module_hash"]
        if self._override is not None:
            logger.warning(
                "persistent_module_hash=%r overrides the module key: changes to the code, "
                "init arguments or weights will not change the cache", self._override,
            )
        self._lock = threading.Lock()
        self._handle: Optional[_StoreHandle] = None
        self._handle_hash: Optional[str] = None
        self._logged: set = set()
        self._counts = {"hits": 0, "misses": 0, "items_stored": 0}
        # A limit of 0 stores nothing, as in torchcache 0.4.1.
        self._store_nothing = self._limit() == 0
        self._key_switches = 0
        # Context digests by (module key, training, autocast, argument text): a call
        # with a context seen before skips the blake2b.
        self._contexts: Dict[tuple, Tuple[str, bytes]] = {}
        _caches.add(self)

    def rebuild_state(self) -> Dict[str, Any]:
        """What a copy (deepcopy, pickle, a spawn worker) needs to rebuild this cache
        around itself: the options, the key's fixed part and, for a persistent cache in
        a temporary directory, that directory, so that copies share it."""
        private = None
        if self.persistent and self.options["persistent_cache_dir"] is None:
            private = str(self._private_dir or _private_cache_dir())
        return {"options": dict(self.options), "structural": self.keys.structural,
                "private_dir": private}

    # -- public surface (torchcache 0.4.1 names) --

    @property
    def module_hash(self) -> str:
        """Hex key of the current store; with persistence, the name of its subdirectory."""
        if self._override is not None:
            return str(self._override)
        return self.keys.current(False)

    @property
    def cache_dir(self) -> Optional[Path]:
        if not self.persistent:
            return None
        return self._parent_dir() / self.module_hash

    def _parent_dir(self) -> Path:
        parent = self.options["persistent_cache_dir"]
        if parent is not None:
            return Path(parent)
        return self._private_dir or _private_cache_dir()

    def _limit(self) -> int:
        return int(self.options["max_persistent_cache_size" if self.persistent
                                 else "max_memory_cache_size"])

    def _full(self) -> bool:
        if self._store_nothing:
            return self._counts["misses"] > 0
        return self._handle is not None and bool(self._handle.store.is_full)

    @property
    def is_memory_cache_full(self) -> bool:
        return not self.persistent and self._full()

    @property
    def is_persistent_cache_full(self) -> bool:
        return self.persistent and self._full()

    def revalidate(self) -> bool:
        """Re-read everything the key covers now, weights by content (writes through
        `.data` are otherwise seen at the periodic check); True if the key changed."""
        return self.keys.revalidate()

    def clear(self) -> None:
        """Forget this module's entries: the in-memory store is dropped (and with it
        the entries of instances sharing its key); for a persistent cache, this module
        key's directory is emptied of our files."""
        with self._lock:
            handle, self._handle, self._handle_hash = self._handle, None, None
            with _registry_lock:
                for key, value in list(_open_stores.items()):
                    if value is handle:
                        del _open_stores[key]
            if handle is not None:
                with handle.lock:
                    handle.layouts.clear()
                    handle.store.close()
            if self.persistent:
                path = self.cache_dir
                if path is not None and path.is_dir():
                    # The CLI's clear: only our files, through a no-follow directory fd.
                    from .cli import _remove_module, _scan_module

                    _remove_module(_scan_module(path))

    def hash_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Per-item digests (B, 2) of ``x`` with this cache's subsample_count."""
        return hash_tensor(x, subsample_count=self.subsample_count)

    def stats(self) -> Dict[str, Any]:
        """Hits, misses and items stored by this instance, and the bytes of its store."""
        out: Dict[str, Any] = dict(self._counts)
        store = self._handle.store.stats() if self._handle is not None else {}
        out["memory_bytes"] = 0 if self.persistent else store.get("bytes_indexed", 0)
        out["persistent_bytes"] = store.get("bytes_indexed", 0) if self.persistent else 0
        out["store"] = store
        return out

    # -- the call --

    def call(self, forward: Callable, args: tuple, kwargs: dict,
             training: Optional[bool] = None) -> Any:
        if not self.enabled:
            return forward(*args, **kwargs)
        start = time.perf_counter()
        try:
            return self._cached_call(forward, args, kwargs, training)
        except LayoutUnavailable:
            # The stored layout names a class this process has not loaded (the cache
            # never imports on a directory's behalf): the module answers this call.
            self._log_once("layout-class", "a stored output layout names a class that is "
                           "not loaded in this process; %s runs forward for such calls",
                           self.qualname)
            return forward(*args, **kwargs)
        finally:
            self.keys.spent(time.perf_counter() - start)

    def _cached_call(self, forward: Callable, args: tuple, kwargs: dict,
                     training: Optional[bool]) -> Any:
        inputs, context, batch, device = self._split_arguments(args, kwargs)
        if batch == 0:
            return forward(*args, **kwargs)
        grad = torch.is_grad_enabled()
        if grad:
            self._check_grad(inputs)
        if training or (_worker_unchecked and not self.persistent):
            self._warn_useless(training)  # (only when one of its warnings can apply)
        handle, ctx_hex, ctx_digest = self._context(context, device, grad, training)
        layout = handle.layouts.get(ctx_hex)
        if layout is None:
            layout = self._layout(handle, ctx_hex)
        found = self._find(handle, inputs, ctx_digest, layout, device, batch)
        if handle.remote is not None and layout is not None and found.hits < batch:
            # issue 15 hook: the remote puts what it holds of the missing rows into the
            # local store (each record verified in C, remote.py); then the call looks
            # its rows up again.
            keys = found.keys
            if isinstance(keys, bytes):
                keys = torch.frombuffer(bytearray(keys), dtype=torch.int64).view(-1, 2)
            if found.miss is not None:
                keys = keys[found.miss]
            if handle.remote.fill(handle.store, [_leaf_keys(keys, j)
                                                 for j in range(len(layout["dtypes"]))],
                                  handle.lock):
                # The same keys again: looked up, not hashed a second time.
                found = self._find(handle, inputs, ctx_digest, layout, device, batch,
                                   keys=found.keys)
        if found.hits == batch:
            with self._lock:
                self._counts["hits"] += batch
            self._report_faults(handle.store)
            return unflatten_output(layout["spec"], found.leaves)
        with self._lock:
            self._counts["hits"] += found.hits
            self._counts["misses"] += batch - found.hits
        # The misses (every row, or found.miss): forward runs on them, they are stored,
        # and their rows are written into the hits' outputs.
        miss_leaves, layout = self._forward_misses(forward, args, kwargs, found.miss, batch,
                                                   layout)
        if self.keys.after_forward():
            # forward assigned attributes that were in the key: they are left out
            # from now on, so these outputs belong under the key without them.
            handle, ctx_hex, ctx_digest = self._context(context, device, grad, training)
            found.keys = self._find(handle, inputs, ctx_digest, None, device, batch).keys
        if handle.layouts.get(ctx_hex) is not layout:
            self._register_layout(handle, ctx_hex, layout)
        stored = self._stored_leaves(miss_leaves)
        self._store(handle, found, stored)
        self._report_faults(handle.store)
        leaves = self._returned(stored, layout, device)
        if found.hits:
            for j, (out, miss_leaf) in enumerate(zip(found.leaves, leaves, strict=True)):
                if miss_leaf.shape[1:] != out.shape[1:]:
                    raise RuntimeError(
                        f"cached output leaf {j} has item shape {tuple(out.shape[1:])} but "
                        f"forward now returns {tuple(miss_leaf.shape[1:])} for the same "
                        "arguments")
                out[found.miss.to(out.device)] = miss_leaf
            leaves = found.leaves
        return unflatten_output(layout["spec"], leaves)

    # -- steps --

    def _split_arguments(self, args: tuple, kwargs: dict):
        inputs, context = flatten_inputs(args, kwargs)
        if not inputs:
            raise ValueError("a cached call needs at least one tensor argument with a batch "
                             "dimension")
        batch = inputs[0][1].shape[0]
        if len(inputs) > 1 and any(t.shape[0] != batch for _, t in inputs):
            sizes = {name: t.shape[0] for name, t in inputs}
            raise ValueError(f"every tensor argument must have the same leading batch size; "
                             f"got {sizes}")
        return inputs, context, batch, inputs[0][1].device

    def _check_grad(self, inputs) -> None:
        for name, t in inputs:
            if t.requires_grad:
                raise ValueError(
                    f"argument {name!r} requires grad while grad is enabled: a cached output "
                    "cannot carry gradients back to it. Detach the input, call under "
                    "torch.no_grad(), or do not cache this module")

    def _warn_useless(self, training: Optional[bool]) -> None:
        """Say so, once, when caching cannot help (issue 10, deliverable 5)."""
        if training and self.keys.dropout is not None:
            self._log_once("dropout", "%s is cached in training mode with active dropout (%s): "
                           "one random sample per item is stored and served from then on. "
                           "Call .eval() on the cached module", self.qualname, self.keys.dropout)
        global _worker_unchecked
        if not self.persistent and _worker_unchecked:
            _worker_unchecked = False
            info = torch.utils.data.get_worker_info()
            if info is not None:
                _warned_process.add("worker")
                logger.warning(
                    "%s uses an in-memory cache inside a DataLoader worker process: workers "
                    "are new processes (every epoch unless persistent_workers=True), so their "
                    "memory caches start empty and rarely hit. Use persistent=True, which "
                    "every worker shares, or cache in the main process", self.qualname)

    @staticmethod
    def _autocast(device: torch.device) -> str:
        if not any_autocast():  # the common case: no device query (device.type ~0.4 us)
            return "noautocast"
        kind = device.type
        return autocast_state(kind if kind in ("cpu", "cuda") else "cpu")

    def _current_store(self, device: torch.device, grad: bool) -> Tuple[_StoreHandle, str]:
        with self._lock:
            mhash = self.keys.current(grad)
            if self._override is not None:
                mhash = str(self._override)
            if self._handle is not None and self._handle_hash == mhash:
                return self._handle, mhash
            if self._handle is not None:
                self._key_switches += 1
            if self._key_switches > 3 and "churn" not in self._logged:
                self._logged.add("churn")
                logger.warning(
                    "parameters or buffers of a cached module keep changing between calls "
                    "(BatchNorm in train mode?); every change starts an empty cache. Call "
                    ".eval() on the frozen module")
            opts = self.options
            if self.persistent:
                path = self.cache_dir
                level = opts["zstd_compression_level"] if opts["zstd_compression"] else None
                limit = int(opts["max_persistent_cache_size"])
                self._handle = _open_store(("dir", str(path), level, limit,
                                            opts.get("persistent_remote")), lambda: HostTier(
                    _C.Store(str(path), max_bytes=limit, zstd_level=level,
                             zstd_threads=int(opts["zstd_compression_threads"]),
                             refresh_ms=_REFRESH_MS), _dtype_from_word))
                # issue 15 hook: attach the object-store tier (remote.py) to the handle.
                url = opts.get("persistent_remote")
                if url is not None and self._handle.remote is None:
                    from . import remote

                    self._handle.remote = remote.attach(
                        url, str(path), mhash, float(opts.get("remote_refresh_s", 5.0)),
                        _dtype_from_word)
            else:
                limit = int(opts["max_memory_cache_size"])
                tier = _tier_device(opts["memory_cache_device"], device)
                if tier is None:
                    self._handle = _open_store(("mem", mhash, limit), lambda: HostTier(
                        _C.Store(None, max_bytes=limit), _dtype_from_word))
                else:
                    self._handle = _open_store(("dev", mhash, limit, str(tier)),
                                               lambda: DeviceTier(tier, limit))
            self._handle_hash = mhash
            if self.persistent:
                # Who made this directory and when it was last used, for `info` and
                # `prune` (meta.py; at most one write per 5 minutes, never raises).
                touch_module_dir(self._parent_dir() / mhash, qualname=self.qualname,
                                 module_key=mhash)
            logger.info("module hash %s (%s)", mhash, self.cache_dir or "in memory")
            return self._handle, mhash

    def _layout(self, handle: _StoreHandle, ctx_hex: str) -> Optional[dict]:
        layout = handle.layouts.get(ctx_hex)
        if layout is None and self.persistent:
            # Missing, unreadable or not matching the schema: the call runs forward and
            # the sidecar is written again.
            data = read_json_validated(str(self.cache_dir / f"layout-{ctx_hex}.json"),
                                       _layout_is_valid)
            if data is None and handle.remote is not None:
                # issue 15 hook: another node's layout, copied from the remote.
                path = str(self.cache_dir / f"layout-{ctx_hex}.json")
                if handle.remote.fetch_layout(f"layout-{ctx_hex}.json", path):
                    data = read_json_validated(path, _layout_is_valid)
            if data is not None:
                layout = {"spec": data["spec"], "dtypes": data["dtypes"]}
                handle.layouts[ctx_hex] = layout
        return layout

    def _context(self, context: str, device, grad: bool,
                 training) -> Tuple[_StoreHandle, str, bytes]:
        """The store of the current module key and the call's context digest (and hex)."""
        handle, mhash = self._current_store(device, grad)
        text = (mhash, training, self._autocast(device), context)
        known = self._contexts.get(text)
        if known is None:
            if len(self._contexts) >= _CONTEXTS_KEPT:
                self._contexts.clear()
            digest = _text_digest(f"{mhash}|{training}|{text[2]}|{context}")
            known = self._contexts[text] = (digest.hex(), digest)
        return handle, known[0], known[1]

    def _find(self, handle: _StoreHandle, inputs, ctx_digest: bytes, layout: Optional[dict],
              device, batch: int, keys: Any = None) -> "_Found":
        """Item keys, lookup, the hit/miss split and the hits' outputs (keys only when
        layout is None).  A host store with host inputs does all of it in one C call
        (csrc/call.c); other tiers and device inputs take the step-by-step path.
        `keys`: the keys an earlier _find of these inputs returned, looked up again
        without hashing the inputs."""
        leaves = None if layout is None else _leaf_constants(len(layout["dtypes"]))
        if keys is not None and not isinstance(keys, bytes):
            return self._find_steps(handle, [], ctx_digest, layout, device, batch, keys)
        if keys is not None:
            tensors = keys
        else:
            if len(inputs) == 1:  # no list comprehension for the common case
                t = inputs[0][1]
                tensors = [t if not (t.is_conj() or t.is_neg()) else _resolved(t)]
            else:
                tensors = [t if not (t.is_conj() or t.is_neg()) else _resolved(t)
                           for _, t in inputs]
        c_store = handle.c_store
        if c_store is None:
            result = None
        elif layout is None:
            result = _C.call_fetch(c_store, tensors, ctx_digest, None, self.subsample_count or 0,
                                   torch.get_num_threads())
        else:
            with handle.lock:
                result = _C.call_fetch(c_store, tensors, ctx_digest, leaves,
                                       self.subsample_count or 0, torch.get_num_threads())
        if result is None:
            return self._find_steps(handle, tensors, ctx_digest, layout, device, batch)
        keys, hits, miss_rows, capsules = result
        found = _Found(keys, hits)
        if hits < batch:
            found.miss_rows = miss_rows
            if miss_rows is not None:
                found.miss = torch.frombuffer(bytearray(miss_rows), dtype=torch.int64)
        if capsules is not None:
            assert layout is not None
            if len(capsules) == 1:
                found.leaves = [_as_dtype(_from_capsule(capsules[0]), layout["dtypes"][0])]
            else:
                found.leaves = [_as_dtype(_from_capsule(c), layout["dtypes"][j])
                                for j, c in enumerate(capsules)]
        return found

    def _find_steps(self, handle: _StoreHandle, tensors: List[torch.Tensor], ctx_digest: bytes,
                    layout: Optional[dict], device, batch: int,
                    keys: Optional[torch.Tensor] = None) -> "_Found":
        """_find one torch op at a time (DeviceTier, CUDA inputs): same keys, same split.
        `keys`: these inputs' keys from an earlier _find_steps (then not hashed again)."""
        if keys is None:
            columns = [_digest_pair(ctx_digest).expand(batch, 2)]
            columns += [hash_tensor(t, subsample_count=self.subsample_count) for t in tensors]
            keys = hash_tensor(torch.stack(columns, dim=1))
        found = _Found(keys, 0)
        if layout is None:
            return found
        keys = found.keys
        with handle.lock:
            present = torch.ones(batch, dtype=torch.bool)
            for j in range(len(layout["dtypes"])):
                present &= torch.frombuffer(bytearray(handle.store.lookup(_leaf_keys(keys, j))),
                                            dtype=torch.uint8).bool()
            hit = present.nonzero().squeeze(1)
            hit_leaves: List[torch.Tensor] = []
            if len(hit):
                # A hit the store could not serve (a fault, a record changed since the
                # lookup) runs forward with the misses.
                hit_leaves, served = self._gather(handle.store, keys[hit], layout, device)
                if not bool(served.all()):
                    present[hit[~served]] = False
                    hit_leaves = [t[served.to(t.device)] for t in hit_leaves]
                    hit = present.nonzero().squeeze(1)
        found.hits = len(hit)
        if found.hits < batch:
            found.miss = (~present).nonzero().squeeze(1) if found.hits else None
        if found.hits == batch:
            found.leaves = hit_leaves
        elif found.hits:
            found.leaves = []
            for leaf in hit_leaves:
                out = torch.empty((batch, *leaf.shape[1:]), dtype=leaf.dtype, device=device)
                out[hit.to(device)] = leaf
                found.leaves.append(out)
        return found

    def _forward_misses(self, forward, args, kwargs, miss: Optional[torch.Tensor],
                        batch: int, known: Optional[dict]):
        """forward on every row (miss None) or on rows `miss` only; the outputs' leaves
        and their layout (`known` itself when they match it, so that the caller can
        tell a layout seen before by identity)."""
        if miss is None:
            out = forward(*args, **kwargs)
            rows = batch
        else:
            sub_args, sub_kwargs = index_inputs(args, kwargs, lambda t: t[miss.to(t.device)])
            out = forward(*sub_args, **sub_kwargs)
            rows = len(miss)
        if (known is not None and known["spec"] == "T" and type(out) is torch.Tensor
                and out.ndim and out.shape[0] == rows
                and known["dtypes"][0] == _DTYPE_NAME_OF.get(out.dtype)):
            # the common case, one tensor as before: flatten_output's answer, without
            # building the spec and dtype list to compare them with the known ones
            return [out], known
        spec, leaves = flatten_output(out)
        for j, leaf in enumerate(leaves):
            if leaf.dim() == 0 or leaf.shape[0] != rows:
                raise ValueError(
                    f"output leaf {j} has shape {tuple(leaf.shape)}; every output tensor must "
                    f"have the batch size {rows} as its leading dimension")
        dtypes = [_DTYPE_NAME_OF.get(t.dtype) or str(t.dtype).split(".")[1] for t in leaves]
        if known is not None and known["dtypes"] == dtypes and known["spec"] == spec:
            return leaves, known
        return leaves, {"spec": spec, "dtypes": dtypes}

    def _register_layout(self, handle: _StoreHandle, ctx_hex: str, layout: dict) -> None:
        with handle.lock:
            known = handle.layouts.get(ctx_hex)
            if known is not None and known != layout:
                raise RuntimeError(
                    f"forward returned a different output structure or dtype ({layout}) than "
                    f"before for the same arguments ({known})")
            if known is None:
                handle.layouts[ctx_hex] = layout
                if self.persistent:
                    self._write_layout(ctx_hex, layout)

    def _write_layout(self, ctx_hex: str, layout: dict) -> None:
        path = self.cache_dir / f"layout-{ctx_hex}.json"
        if read_json_validated(str(path), _layout_is_valid) is not None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(str(path), {"format": _LAYOUT_FORMAT, **layout})
        except OSError as exc:
            self._log_once("layout", "could not write %s (%s); other processes will "
                           "recompute these outputs once", path, exc)

    def _stored(self, leaf: torch.Tensor) -> torch.Tensor:
        if leaf.requires_grad:
            leaf = leaf.detach()
        if self.cache_dtype is not None and leaf.is_floating_point():
            leaf = leaf.to(self.cache_dtype)
        return leaf

    def _stored_leaves(self, leaves: List[torch.Tensor]) -> List[torch.Tensor]:
        """The leaves as they are stored: detached, in cache_dtype when one is set."""
        if self.cache_dtype is None:
            for t in leaves:  # a loop, not any(genexpr): this runs at every miss
                if t.requires_grad:
                    break
            else:
                return leaves
        return [self._stored(t) for t in leaves]

    def _returned(self, stored: List[torch.Tensor], layout: dict, device) -> List[torch.Tensor]:
        # Misses are returned from their stored form, so an output never depends on
        # whether it was a hit: the same item gives the same values in every epoch.
        if self.cache_dtype is None:
            # stored in forward's own dtypes (the layout's): only the device may differ
            if device == _CPU:  # (device.type costs ~0.4 us, an equality 0.06)
                for t in stored:  # t.is_cpu: no torch.device made per leaf
                    if not t.is_cpu:
                        break
                else:
                    return stored
            return [t if t.device == device else t.to(device) for t in stored]
        out = []
        for name, leaf in zip(layout["dtypes"], stored, strict=True):
            dtype = _DTYPE_NAMES.get(name, leaf.dtype)
            if leaf.dtype != dtype or leaf.device != device:
                leaf = leaf.to(device=device, dtype=dtype)
            out.append(leaf)
        return out

    def _store(self, handle: _StoreHandle, found: "_Found", leaves: List[torch.Tensor]) -> None:
        """Store the computed rows (found.miss, or every row) of each leaf (as
        _stored_leaves gives them)."""
        if self._store_nothing:
            limit = "max_persistent_cache_size" if self.persistent else "max_memory_cache_size"
            self._log_once("full", "%s=0: new outputs are not stored, forward keeps running",
                           limit)
            return
        store, keys = handle.store, found.keys
        if isinstance(keys, bytes):
            # The C path: every leaf in one call, under one lock hold (a full or
            # failed store appends nothing and says so below).
            srcs = leaves
            for t in leaves:  # a copy of the list only when a leaf needs one
                if not (t.is_cpu and t.is_contiguous()):
                    srcs = [t if t.is_cpu and t.is_contiguous() else t.cpu().contiguous()
                            for t in leaves]
                    break
            with handle.lock:
                stored = _C.call_put(handle.c_store, keys, found.miss_rows,
                                     _leaf_constants(len(srcs)), srcs)
        else:
            if store.is_full or store.io_error:
                return
            if found.miss is not None:
                keys = keys[found.miss]
            with handle.lock:
                stored = min(store.put(_leaf_keys(keys, j), leaf)
                             for j, leaf in enumerate(leaves))
        with self._lock:
            self._counts["items_stored"] += stored
        if handle.remote is not None:
            handle.remote.notify()  # issue 15 hook: the uploader may seal new records
        if stored == leaves[0].shape[0]:
            return  # every row stored: neither full nor failed
        if store.is_full:
            limit = "max_persistent_cache_size" if self.persistent else "max_memory_cache_size"
            self._log_once("full", "cache is full (%s reached); new outputs are not stored, "
                           "forward keeps running", limit)
        if store.io_error:
            self._log_once("io", "cache stopped storing after an I/O error: %s",
                           store.io_error)

    def _gather(self, store: Any, keys: torch.Tensor, layout: dict,
                device) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The hit rows' leaves and which rows every leaf served (a tier never raises
        for a fault; an unserved row is recomputed by the caller)."""
        leaves = []
        served = torch.ones(len(keys), dtype=torch.bool)
        for j, name in enumerate(layout["dtypes"]):
            leaf, leaf_served = store.fetch(_leaf_keys(keys, j), _DTYPE_NAMES[name], device)
            if leaf is None:
                return leaves, leaf_served
            served &= leaf_served
            leaves.append(leaf)
        return leaves, served

    def _report_faults(self, store: Any) -> None:
        """One WARNING per kind of store fault (I/O error, truncated or removed
        segment, descriptor limit...): the rows it hit were computed instead."""
        faults = store.take_faults()
        if not faults:  # the common answer, at every call
            return
        for kind, message in faults.items():
            self._log_once(f"fault:{kind}", "cache store fault (%s): %s; the affected items "
                           "are computed instead of read, and later faults of this kind are "
                           "counted in stats()['store']['faults']", kind, message)

    def _log_once(self, what: str, msg: str, *args: Any) -> None:
        if what not in self._logged:
            self._logged.add(what)
            logger.warning(msg, *args)
