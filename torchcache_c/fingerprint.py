"""Module keys: what a cached output depends on besides the item's own inputs.

A module key is built from
  * the code of the decorated class and of every base up to (excluding) nn.Module:
    its source text when inspect can find it, and always the bytecode and constants
    of its functions.  The bytecode is what actually runs: a notebook cell that
    redefines the class, or a file edited after import, can make linecache return
    text that differs from the running code, but never the same bytecode;
  * the init arguments (tensors by content digest);
  * the cache settings that change what is stored (subsample_count, cache_dtype);
and, as a separate part checked on every call, a digest of the parameters and
buffers (`StateTracker`).  module_hash = blake2b(structural key, state digest).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import types
import weakref
from typing import Any, Callable, Iterable, List, Optional, Tuple

import torch

from .hashing import hash_tensor

logger = logging.getLogger("torchcache_c")

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach()
    flat = t.reshape(1, -1) if t.numel() else t.reshape(1, 0)
    digest = hash_tensor(flat.cpu() if t.device.type not in ("cpu", "cuda") else flat)
    return f"tensor({t.dtype},{tuple(t.shape)},{digest[0, 0].item():x}{digest[0, 1].item():x})"


def canonical(value: Any) -> str:
    """A deterministic text for a value that goes into a key (init args, closures)."""
    if isinstance(value, torch.Tensor):
        return _tensor_digest(value)
    if isinstance(value, (list, tuple)):
        inner = ",".join(canonical(v) for v in value)
        return f"{type(value).__qualname__}[{inner}]"
    if isinstance(value, dict):
        items = sorted((canonical(k), canonical(v)) for k, v in value.items())
        return "dict{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (set, frozenset)):
        return "set{" + ",".join(sorted(canonical(v) for v in value)) + "}"
    if isinstance(value, types.FunctionType):
        return "function:" + code_digest(value.__code__)
    if isinstance(value, torch.nn.Module):
        # Structure (repr), the code of every submodule's class and the training flag;
        # its weights are tracked where it is used (parameters, closures, defaults).
        classes = ",".join(class_digest(type(m)) for m in value.modules())
        return f"module:{classes}:{value.training}:{value!r}"
    text = repr(value)
    if _ADDRESS.search(text):
        logger.info(
            "the key includes %s, whose repr holds a memory address: entries will not be "
            "shared across processes (set persistent_module_hash to share them)",
            type(value).__qualname__,
        )
    return f"{type(value).__module__}.{type(value).__qualname__}:{text}"


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


def function_code_text(fn: Callable) -> str:
    """Source (if found) and bytecode of a function, including its default values."""
    fn = inspect.unwrap(fn)
    parts = [f"{fn.__module__}.{fn.__qualname__}", "code:" + code_digest(fn.__code__)]
    parts.append("defaults:" + canonical(fn.__defaults__))
    parts.append("kwdefaults:" + canonical(fn.__kwdefaults__))
    try:
        parts.append(inspect.getsource(fn))
    except (OSError, TypeError):
        logger.info("source of %s not found; its key uses the bytecode only", fn.__qualname__)
    return "\n".join(parts)


def class_code_text(cls: type, skip: Callable[[type], bool] = lambda c: False) -> str:
    """Code of `cls` and of each base class before nn.Module in its MRO (but `skip`ped ones)."""
    parts = []
    for klass in cls.__mro__:
        if klass is torch.nn.Module or klass is object:
            break
        if skip(klass):
            continue
        parts.append(f"class {klass.__module__}.{klass.__qualname__}")
        try:
            parts.append(inspect.getsource(klass))
        except (OSError, TypeError):
            logger.info(
                "source of class %s not found (REPL or notebook?); its key uses the bytecode "
                "of its functions", klass.__qualname__,
            )
        for name, fn in _functions_of(klass):
            parts.append(f"def {name}: {code_digest(fn.__code__)} "
                         f"{canonical(fn.__defaults__)} {canonical(fn.__kwdefaults__)}")
    return "\n".join(parts)


_class_digests: "weakref.WeakKeyDictionary[type, str]" = weakref.WeakKeyDictionary()


def class_digest(cls: type) -> str:
    """Digest of a class's code and its bases' (class_code_text), once per class object.

    A notebook cell that redefines the class makes a new class object, hence a new digest.
    """
    digest = _class_digests.get(cls)
    if digest is None:
        digest = hashlib.blake2b(class_code_text(cls).encode(), digest_size=16).hexdigest()
        _class_digests[cls] = digest
    return digest


def structural_key(code_text: str, init_args: tuple, init_kwargs: dict,
                   settings: dict) -> str:
    """blake2b of code, init arguments and digest-changing cache settings."""
    h = hashlib.blake2b(digest_size=32, person=b"tc-module-key")
    for part in (code_text, canonical(init_args), canonical(init_kwargs),
                 canonical(sorted(settings.items()))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class StateTracker:
    """Digest of a set of tensors (parameters and buffers), recomputed only on change.

    A change is seen through each tensor's version counter (bumped by every in-place
    write, load_state_dict included), its data_ptr (`p.data = ...`) and its shape.
    """

    def __init__(self, named_tensors: Callable[[], List[Tuple[str, torch.Tensor]]]):
        self._named_tensors = named_tensors
        self._signature: Optional[tuple] = None
        self._digest = ""
        self.changes = 0

    def digest(self) -> str:
        tensors = self._named_tensors()
        signature = tuple(
            (name, t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device)
            for name, t in tensors
        )
        if signature != self._signature:
            h = hashlib.blake2b(digest_size=16)
            for name, t in tensors:
                h.update(f"{name}={_tensor_digest(t)};".encode())
            if self._signature is not None:
                self.changes += 1
            self._signature = signature
            self._digest = h.hexdigest()
        return self._digest


def module_hash(structural: str, state_digest: str) -> str:
    """The hex name of one store: structural key + parameters/buffers digest."""
    return hashlib.blake2b(f"{structural}:{state_digest}".encode(), digest_size=16).hexdigest()
