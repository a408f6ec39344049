"""Small JSON files beside the segments (the output layout sidecars), written
and read so that no other user of the directory can redirect or break them.

* ``write_json_atomic`` writes through a temporary file created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` under an unpredictable name, so a planted
  symbolic link or file is never followed or overwritten, then renames it over
  the target (readers see the whole file or the old one).
* ``read_json_validated`` returns the parsed object only if it is well-formed
  JSON that passes a schema check; anything else (missing, unreadable, a link,
  not JSON, the wrong shape) reads as ``None``, and the caller computes the
  content again and rewrites the file.

``layout_is_valid`` is the schema of the layout sidecar written by cache.py:
``{"format": "torchcache_c-layout-1", "spec": SPEC, "dtypes": [str, ...]}``
where SPEC is ``"T"`` or ``{"tuple"|"list": [SPEC...]}`` or
``{"dict": [[str, SPEC]...]}`` and the number of ``"T"`` leaves equals the
number of dtypes.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from typing import Any, Callable, Optional

LAYOUT_FORMAT = "torchcache_c-layout-1"
# A sidecar is a few hundred bytes; a huge file is not ours to parse.
MAX_SIDECAR_BYTES = 1 << 20


def write_json_atomic(path: str, obj: Any, mode: int = 0o666) -> None:
    """Writes obj as JSON to path through an O_EXCL|O_NOFOLLOW temporary file in
    the same directory and os.replace.  Raises OSError (the target is then
    untouched and no temporary file is left)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    data = json.dumps(obj).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json_validated(path: str, validate: Callable[[Any], bool]) -> Optional[Any]:
    """The JSON object in path if it is a regular file (links are not followed)
    of at most MAX_SIDECAR_BYTES that parses and passes validate; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIDECAR_BYTES:
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        return data if validate(data) else None
    except (TypeError, KeyError, ValueError, RecursionError):
        return None


def _spec_leaves(spec: Any) -> int:
    """Leaves of a layout spec, or -1 if it is not one."""
    if spec == "T":
        return 1
    if not isinstance(spec, dict) or len(spec) != 1:
        return -1
    ((kind, items),) = spec.items()
    if kind not in ("tuple", "list", "dict") or not isinstance(items, list):
        return -1
    total = 0
    for item in items:
        if kind == "dict":
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                return -1
            item = item[1]
        n = _spec_leaves(item)
        if n < 0:
            return -1
        total += n
    return total


def layout_is_valid(data: Any) -> bool:
    """The layout sidecar schema (module docstring)."""
    if not isinstance(data, dict) or data.get("format") != LAYOUT_FORMAT:
        return False
    dtypes = data.get("dtypes")
    if not isinstance(dtypes, list) or not all(isinstance(d, str) for d in dtypes):
        return False
    return _spec_leaves(data.get("spec")) == len(dtypes)
