"""module.json: who made a module-key directory, and when it was last used.

Each module-key directory of a persistent cache (``ROOT/<module_key>/``) may hold
one small JSON file, ``module.json``::

    {"format": "torchcache_c-module-1", "qualname": "pkg.models.Encoder",
     "module_key": "<the directory's name>", "created": 1764237157.2,
     "last_used": 1764240000.9}

``created`` and ``last_used`` are unix times (seconds).  The shim writes it with
:func:`touch_module_dir` when it opens a persistent store, and again at most every
``min_interval`` seconds while the store is used; ``python -m torchcache_c info``
shows it and ``prune`` removes least recently used directories first.  The size of
a directory is never stored: the tools add up its files.

Writes go to a temporary file ``.module.json.<pid>.<random>.tmp`` in the same
directory, created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, then ``os.replace``d
over ``module.json``; all names are resolved through a descriptor of the
directory opened with ``O_NOFOLLOW``, so no symbolic link is ever followed (a
link planted at either name makes the write fail, or is replaced, never written
through).  Metadata is a convenience: every failure is logged at DEBUG and
reported as ``False``, never raised, so it can never break a training step.
This module imports neither torch nor the C extension (the CLI uses it).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ._logging import logger

__all__ = [
    "META_FORMAT", "META_NAME", "META_TMP", "DEFAULT_MIN_INTERVAL",
    "touch_module_dir", "read_module_meta", "qualname_of",
]

META_FORMAT = "torchcache_c-module-1"
META_NAME = "module.json"
# The temporary files module.json is written through (the CLI recognises them).
META_TMP = re.compile(r"\.module\.json\.\d+\.[0-9a-f]+\.tmp\Z", re.DOTALL)
# Repeated touches of one directory within this many seconds do nothing.
DEFAULT_MIN_INTERVAL = 300.0
# A valid module.json is a few hundred bytes; anything far larger is not ours.
_MAX_BYTES = 64 * 1024

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

# Directory (as given) -> time.monotonic() of this process's last try.  No lock: two
# threads racing past the check write twice, which is harmless (and a lock held at
# fork() would hang the child).
_last_touch: Dict[str, float] = {}


def qualname_of(obj: Any) -> str:
    """``"pkg.mod.Class"`` for a class or function (an instance names its class)."""
    if not isinstance(obj, type) and not callable(obj):
        obj = type(obj)
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}"


def _is_time(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        return False


def _validate(data: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(data, dict) or data.get("format") != META_FORMAT:
        return None
    qualname, key = data.get("qualname"), data.get("module_key")
    created, last_used = data.get("created"), data.get("last_used")
    if not (isinstance(qualname, str) and qualname and isinstance(key, str) and key
            and _is_time(created) and _is_time(last_used)):
        return None
    return {"format": META_FORMAT, "qualname": qualname, "module_key": key,
            "created": float(created), "last_used": float(last_used)}


def _open_dir(module_dir: Union[str, Path]) -> int:
    return os.open(module_dir, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)


def _read_at(dir_fd: int) -> Optional[Dict[str, Any]]:
    """module.json in the directory dir_fd, validated; None when missing or invalid."""
    try:
        fd = os.open(META_NAME, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dir_fd)
    except OSError:  # missing, a link (ELOOP), unreadable
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, _MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) > _MAX_BYTES:
        return None
    try:
        return _validate(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def read_module_meta(module_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """``module_dir/module.json`` as a dict with the keys ``format``, ``qualname``,
    ``module_key`` (str) and ``created``, ``last_used`` (float unix times).

    None when the file is missing, unreadable, a symbolic link, not JSON, or does
    not have exactly these types (extra keys are ignored); never raises OSError.
    """
    try:
        dir_fd = _open_dir(module_dir)
    except OSError:
        return None
    try:
        return _read_at(dir_fd)
    finally:
        os.close(dir_fd)


def _write_at(dir_fd: int, payload: bytes) -> None:
    for _ in range(8):
        tmp = f".{META_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
                         0o666, dir_fd=dir_fd)
            break
        except FileExistsError:  # a leftover (or a planted link) under that name
            continue
    else:
        raise FileExistsError(f"no free temporary name for {META_NAME}")
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, META_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def touch_module_dir(module_dir: Union[str, Path], *, qualname: str, module_key: str,
                     now: Optional[float] = None,
                     min_interval: float = DEFAULT_MIN_INTERVAL) -> bool:
    """Creates or updates ``module_dir/module.json``: ``last_used = now``, ``created``
    kept from the existing file (or ``now`` for a new one), ``qualname`` and
    ``module_key`` as given.  Creates ``module_dir`` (and its parents) if missing.

    ``now`` defaults to ``time.time()``.  A call for a directory that this process
    wrote less than ``min_interval`` seconds ago (monotonic clock) returns False at
    once without touching the disk; ``min_interval=0`` always writes.

    Returns True when the file was written.  Never raises, for I/O problems
    (read-only or full filesystem, permissions, a link where the directory or a
    file should be) nor for bad values: it logs at DEBUG and returns False, and
    the next try for that directory is again ``min_interval`` seconds later.
    """
    tick = time.monotonic()
    try:
        name = os.fspath(module_dir)
    except TypeError as exc:
        logger.debug("could not write %s: %s", META_NAME, exc)
        return False
    last = _last_touch.get(name)
    if last is not None and min_interval > 0 and tick - last < min_interval:
        return False
    _last_touch[name] = tick
    try:
        if now is None:
            now = time.time()
        if not (isinstance(qualname, str) and qualname and isinstance(module_key, str)
                and module_key and _is_time(now)):
            raise ValueError(f"bad module metadata: qualname={qualname!r}, "
                             f"module_key={module_key!r}, now={now!r}")
        try:
            dir_fd = _open_dir(name)
        except FileNotFoundError:
            os.makedirs(name, exist_ok=True)
            dir_fd = _open_dir(name)
        try:
            old = _read_at(dir_fd)
            created = float(now)
            if old is not None and old["module_key"] == module_key:
                created = min(old["created"], created)
            meta = {"format": META_FORMAT, "qualname": qualname, "module_key": module_key,
                    "created": created, "last_used": float(now)}
            _write_at(dir_fd, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
        finally:
            os.close(dir_fd)
        return True
    except (OSError, ValueError) as exc:
        # The throttle stays set: a read-only or full filesystem is not retried on
        # every call.
        logger.debug("could not write %s in %s (%s); it only informs "
                     "`python -m torchcache_c info/prune`", META_NAME, name, exc)
        return False
