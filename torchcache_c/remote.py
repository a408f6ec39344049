"""The object-store tier (issue 15, docs/remote.md): S3, GCS, Azure or a file:// tree
behind a persistent cache directory, which becomes its read-through cache.

Writers upload *sealed chunks* of their own segment files in a background thread;
readers, on a miss, list the chunks' index objects (at most every
``remote_refresh_s`` seconds), fetch a batch's records with ranged GETs coalesced
per chunk, verify every record in C exactly as a local read would
(``_C.parse_record``: header checksum bound to the segment name and offset it was
written at, payload checksum) and put the verified items into the local store,
where the cached call finds them when it looks again.

Objects under ``<url>/<module key>/``:

    c-<segment>-<start:016x>   a chunk: records of <segment> from byte <start> on,
                               concatenated (each keeps its original offset in the
                               index, which its header checksum is bound to)
    i-<segment>-<start:016x>   its index, written after the chunk (binary, below)
    layout-<context>.json      the output layouts (cache.py), copied as they are

A remote fault (timeout, 5xx, a missing or truncated object, a bad checksum) is a
miss and one WARNING per kind, never an exception; a remote that cannot be reached
is left alone for a growing back-off.  The client is obstore (the Python face of
Rust's object_store), an optional extra: ``pip install "torchcache_c[remote]"``.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import struct
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

from . import _C

logger = logging.getLogger("torchcache_c")

SCHEMES = ("s3://", "gs://", "az://", "abfs://", "abfss://", "file://")
INSTALL = 'pip install "torchcache_c[remote]"'

# Tunables, from the environment (docs/remote.md, "Settings").
def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


CHUNK_BYTES = int(_env_float("TORCHCACHE_C_REMOTE_CHUNK_BYTES", 64 << 20))
SEAL_S = _env_float("TORCHCACHE_C_REMOTE_SEAL_S", 60.0)
FLUSH_S = _env_float("TORCHCACHE_C_REMOTE_FLUSH_S", 60.0)
TIMEOUT_S = _env_float("TORCHCACHE_C_REMOTE_TIMEOUT_S", 10.0)
# Ranges of one chunk closer than this are fetched by one GET (object_store's own rule).
COALESCE_GAP = 1 << 20
# One upload step reads at most this much of a segment (a chunk may end earlier).
_MAX_CHUNK_READ = 256 << 20
_BACKOFF_MAX_S = 60.0

_INDEX_MAGIC = b"TCRIDX01"
_INDEX_HEAD = struct.Struct("<8sQQI")  # magic, count, chunk bytes, segment name length
_SEGMENT = re.compile(r"seg-([A-Za-z0-9._]+)-(\d+)-[0-9a-f]{16}\.tcs\Z")
_INDEX_NAME = re.compile(r"i-(seg-.+)-([0-9a-f]{16})\Z")
_LAYOUT = re.compile(r"layout-[0-9a-f]+\.json\Z")


def missing_client_error(where: str) -> Optional[ImportError]:
    """The error persistent_remote raises at decoration without the client, or None."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return ImportError(f"{where}: persistent_remote needs the object-store client "
                           f"obstore, which is not installed; install it with: {INSTALL}")
    return None


def validate_url(url: Any, where: str) -> str:
    """persistent_remote's check at decoration (decorator.py)."""
    if not isinstance(url, str) or not url.startswith(SCHEMES) or \
            len(url.split("://", 1)[1].strip("/")) == 0:
        raise TypeError(f"{where}: persistent_remote must be None or a URL "
                        f"s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or "
                        f"file:///absolute/path, not {url!r}")
    if url.startswith("file://") and not url[len("file://"):].startswith("/"):
        raise ValueError(f"{where}: persistent_remote {url!r}: a file:// URL needs an "
                         "absolute path (file:///path/to/dir)")
    error = missing_client_error(where)
    if error is not None:
        raise error
    return url


def _host() -> str:
    """This host as segment names spell it (docs/format.md, section 1)."""
    try:
        name = socket.gethostname()[:64]
    except OSError:
        name = ""
    return re.sub(r"[^A-Za-z0-9._]", "_", name) or "host"


# ---- the client ---------------------------------------------------------------------

_stores: Dict[str, Any] = {}
_stores_lock = threading.Lock()


def open_store(url: str) -> Any:
    """An obstore store for url (one per URL and process), its credentials and endpoint
    from the client's usual environment variables (AWS_*, GOOGLE_*, AZURE_*)."""
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            from obstore.store import LocalStore, from_url

            if url.startswith("file://"):
                store = LocalStore(url[len("file://"):], mkdir=True)
            else:
                store = from_url(url, client_options=_client_options(), retry_config={
                    "max_retries": 2, "retry_timeout": _timedelta(TIMEOUT_S),
                    "backoff": {"init_backoff": _timedelta(0.1),
                                "max_backoff": _timedelta(1.0), "base": 2}})
            _stores[url] = store
        return store


_CLIENT_KEYS = ("allow_http", "allow_invalid_certificates", "proxy_url", "proxy_ca_certificate",
                "proxy_excludes", "timeout", "connect_timeout")


def _client_options() -> Dict[str, Any]:
    """Timeouts that bound a fault's cost, plus the client settings the environment gives
    (passing client options replaces the ones the client would read itself, such as
    AWS_ALLOW_HTTP for a local endpoint)."""
    secs = max(1, int(TIMEOUT_S))
    out: Dict[str, Any] = {"timeout": f"{secs}s", "connect_timeout": f"{max(1, secs // 2)}s"}
    for key in _CLIENT_KEYS:
        for prefix in ("OBJECT_STORE_", "AWS_", "GOOGLE_", "AZURE_"):
            value = os.environ.get(prefix + key.upper())
            if value is not None:
                out[key] = value.strip().lower() in ("1", "true", "yes") \
                    if key.startswith("allow_") else value
                break
    return out


def _timedelta(seconds: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=seconds)


def _client_error(exc: BaseException) -> bool:
    """An error of the client: any Exception, and a Rust panic, which pyo3 raises as a
    BaseException (PanicException); never KeyboardInterrupt or SystemExit."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _is_exists(exc: BaseException) -> bool:
    return type(exc).__name__ in ("AlreadyExistsError", "PreconditionError")


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError) or type(exc).__name__ == "NotFoundError"


def put_create(store: Any, path: str, data: Any) -> bool:
    """Create path (conditional put: never overwrite); False if it already existed."""
    import obstore

    try:
        obstore.put(store, path, data, mode="create")
        return True
    except Exception as exc:  # obstore's error types
        if _is_exists(exc):
            return False
        raise


def count_requests(ranges: Sequence[Tuple[int, int]], gap: int = COALESCE_GAP) -> int:
    """GETs that get_ranges makes for sorted ranges: those less than `gap` apart share one."""
    n, end = 0, None
    for start, stop in ranges:
        if end is None or start - end > gap:
            n += 1
            end = stop
        else:
            end = max(end, stop)
    return n


def _is_range_error(exc: BaseException) -> bool:
    text = str(exc)
    return "416" in text or "Range Not Satisfiable" in text


def list_objects(store: Any, prefix: str) -> List[Dict[str, Any]]:
    import obstore

    out: List[Dict[str, Any]] = []
    for batch in obstore.list(store, prefix=prefix):
        out.extend(batch)
    return out


def get_bytes(store: Any, path: str) -> memoryview:
    import obstore

    return memoryview(obstore.get(store, path).bytes())


def get_ranges(store: Any, path: str, starts: Sequence[int], ends: Sequence[int]) -> List[Any]:
    import obstore

    return list(obstore.get_ranges(store, path, starts=list(starts), ends=list(ends),
                                   coalesce=COALESCE_GAP))


# ---- index objects ------------------------------------------------------------------

def encode_index(segment: str, chunk_bytes: int, table: torch.Tensor) -> bytes:
    """table: (n, 5) int64 rows key0, key1, offset in segment, offset in chunk, length."""
    name = segment.encode()
    head = _INDEX_HEAD.pack(_INDEX_MAGIC, len(table), chunk_bytes, len(name))
    pad = b"\0" * (-(len(head) + len(name)) % 8)
    return head + name + pad + table.to(torch.int64).contiguous().numpy().tobytes()


def decode_index(data: memoryview, segment: str) -> Optional[Tuple[int, torch.Tensor]]:
    """(chunk bytes, table) of an index object, or None if it is not a valid one for
    `segment`.  Its numbers only say where to look: every record is verified anyway."""
    if len(data) < _INDEX_HEAD.size:
        return None
    magic, count, chunk_bytes, name_len = _INDEX_HEAD.unpack_from(data)
    start = _INDEX_HEAD.size + name_len
    start += -start % 8
    if magic != _INDEX_MAGIC or len(data) != start + 40 * count or \
            bytes(data[_INDEX_HEAD.size:_INDEX_HEAD.size + name_len]) != segment.encode():
        return None
    table = torch.frombuffer(bytearray(data[start:]), dtype=torch.int64).reshape(count, 5) \
        if count else torch.empty((0, 5), dtype=torch.int64)
    seg_off, obj_off, length = table[:, 2], table[:, 3], table[:, 4]
    if count and not bool(((seg_off >= 0) & (obj_off >= 0) & (length >= 128) &
                           (obj_off + length <= chunk_bytes)).all()):
        return None
    return chunk_bytes, table


class RemoteIndex:
    """Key -> (chunk, offset in chunk, length, offset in segment) for every record the
    readers know of, as sorted int64 tensors (48 bytes a record); lookups are
    vectorised (searchsorted)."""

    def __init__(self) -> None:
        self.chunks: List[Tuple[str, str]] = []  # (chunk object path, segment name)
        self._parts: List[torch.Tensor] = []
        self._sorted = torch.empty((0, 6), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self._sorted) + sum(len(p) for p in self._parts)

    def add(self, chunk_path: str, segment: str, table: torch.Tensor) -> None:
        chunk_id = len(self.chunks)
        self.chunks.append((chunk_path, segment))
        ids = torch.full((len(table), 1), chunk_id, dtype=torch.int64)
        # rows: key0, key1, chunk, offset in chunk, length, offset in segment
        self._parts.append(torch.cat([table[:, :2], ids, table[:, 3:5], table[:, 2:3]], 1))

    def _table(self) -> torch.Tensor:
        if self._parts:
            t = torch.cat([self._sorted] + self._parts)
            self._parts = []
            order = torch.argsort(t[:, 1], stable=True)
            order = order[torch.argsort(t[order, 0], stable=True)]
            self._sorted = t[order].contiguous()
        return self._sorted

    def lookup(self, keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(found mask, rows) for (M, 2) int64 keys; rows[i] = chunk, offset in chunk,
        length, offset in segment for the found ones."""
        t = self._table()
        m = len(keys)
        if not len(t) or not m:
            return torch.zeros(m, dtype=torch.bool), torch.zeros((m, 4), dtype=torch.int64)
        k0 = t[:, 0].contiguous()
        pos = torch.searchsorted(k0, keys[:, 0].contiguous()).clamp_(max=len(t) - 1)
        cand = t[pos]
        found = (cand[:, 0] == keys[:, 0]) & (cand[:, 1] == keys[:, 1])
        # The same first half with another second half: walk that run (about never).
        odd = ((cand[:, 0] == keys[:, 0]) & ~found).nonzero().squeeze(1).tolist()
        for i in odd:
            j = int(pos[i])
            while j < len(t) and int(t[j, 0]) == int(keys[i, 0]):
                if int(t[j, 1]) == int(keys[i, 1]):
                    pos[i] = j
                    found[i] = True
                    break
                j += 1
        return found, t[pos][:, 2:6]


# ---- one module key's remote tier ---------------------------------------------------

class RemoteTier:
    """The object-store side of one module-key directory, for one process."""

    def __init__(self, url: str, local_dir: str, module_key: str, refresh_s: float,
                 dtype_of_word: Callable[[int], torch.dtype]):
        self.url = url
        self.local_dir = local_dir
        self.module_key = module_key
        self.prefix = f"{module_key}/"
        self.refresh_s = float(refresh_s)
        self._dtype_of_word = dtype_of_word
        self._lock = threading.Lock()
        self.index = RemoteIndex()
        self._seen: Set[str] = set()
        self._last_list = -float("inf")
        self._down_until = 0.0
        self._backoff = 0.5
        self._logged: Set[str] = set()
        self.stats: Dict[str, int] = {"lists": 0, "index_gets": 0, "range_gets": 0,
                                      "records_fetched": 0, "records_filled": 0,
                                      "bad_records": 0, "chunks_uploaded": 0,
                                      "bytes_uploaded": 0, "upload_errors": 0}
        # writer side (the uploader thread)
        self._filled: Set[Tuple[int, int]] = set()  # keys put here from the remote
        self._sealed: Dict[str, int] = {}            # own segment -> bytes sealed
        self._pending_since: Optional[float] = None
        self._uploaded_layouts: Set[str] = set()
        self._retry_at = 0.0
        self._upload_backoff = 0.5
        self._final_failures = 0
        self.gave_up = False
        self._writer_pid = -1  # the process whose puts this tier uploads
        self._bad_at: Dict[str, Tuple[int, int]] = {}  # segment -> (offset, length then)
        self.store = open_store(url)
        _uploader.register(self)

    # -- warnings ---------------------------------------------------------------

    def _warn_once(self, what: str, msg: str, *args: Any) -> None:
        if what not in self._logged:
            self._logged.add(what)
            logger.warning(msg, *args)

    def _fault(self, exc: BaseException, doing: str) -> None:
        if _is_missing(exc):
            self._warn_once("missing", "remote cache %s: an object went missing while %s "
                            "(%s); those items are computed", self.url, doing, exc)
            return
        now = time.monotonic()
        self._down_until = now + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)
        self._warn_once("unreachable", "remote cache %s is unreachable or failing (%s while "
                        "%s); items it holds are computed instead, and it is tried again "
                        "with back-off", self.url, exc, doing)

    # -- readers ----------------------------------------------------------------

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_list < self.refresh_s:
            return
        self._last_list = now
        # object_store lists whole path segments: the module key's "directory".
        objects = list_objects(self.store, self.module_key)
        self.stats["lists"] += 1
        new = []
        sizes = {meta["path"]: int(meta["size"]) for meta in objects}
        for meta in objects:
            path = meta["path"]
            if path in self._seen:
                continue
            m = _INDEX_NAME.match(path[len(self.prefix):])
            if m is None:
                self._seen.add(path)
                continue
            new.append((path, m.group(1), m.group(2)))
        if not new:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(new))) as pool:
            datas = list(pool.map(lambda item: self._get_index(item[0]), new))
        for (path, segment, start), data in zip(new, datas, strict=True):
            self.stats["index_gets"] += 1
            self._seen.add(path)
            if data is None:
                continue
            parsed = decode_index(data, segment)
            if parsed is None:
                self.stats["bad_records"] += 1
                self._warn_once("bad-index", "remote cache %s: index object %s is not valid; "
                                "its records are not used", self.url, path)
                continue
            chunk = f"{self.prefix}c-{segment}-{start}"
            if sizes.get(chunk) != parsed[0]:
                # Gone, or not the length its index says (cut short, replaced): asking
                # for ranges past its end would fail anyway.
                self.stats["bad_records"] += 1
                self._warn_once("bad-chunk", "remote cache %s: chunk %s is missing or not "
                                "the length its index gives; its records are not used",
                                self.url, chunk)
                continue
            self.index.add(chunk, segment, parsed[1])

    def _get_index(self, path: str) -> Optional[memoryview]:
        try:
            return get_bytes(self.store, path)
        except Exception as exc:
            if not _is_missing(exc):
                raise
            return None

    def fill(self, tier: Any, leaf_keys: List[torch.Tensor], lock: Any) -> int:
        """Put the records of these keys that the remote holds into the local store
        `tier` (under `lock`), each verified as a local read would; returns how many
        were stored.  A fault is a miss and a warning, never an exception."""
        if time.monotonic() < self._down_until:
            return 0
        try:
            with self._lock:
                self._refresh()
                keys = torch.cat(leaf_keys) if len(leaf_keys) > 1 else leaf_keys[0]
                found, rows = self.index.lookup(keys)
            if not bool(found.any()):
                return 0
            records = self._fetch(rows[found])
            stored = self._store_local(tier, records, lock)
            self._backoff = 0.5
            return stored
        except BaseException as exc:
            if not _client_error(exc):
                raise
            self._fault(exc, "reading")
            return 0

    def _fetch(self, rows: torch.Tensor) -> List[Tuple[int, int, int, tuple, bytes]]:
        """Fetches and verifies the records `rows` (chunk, offset, length, offset in
        segment): one get_ranges call per chunk (the client merges ranges less than
        COALESCE_GAP apart into one GET), chunks in parallel."""
        by_chunk: Dict[int, List[Tuple[int, int, int]]] = {}
        for chunk, off, length, seg_off in rows.tolist():
            by_chunk.setdefault(chunk, []).append((off, length, seg_off))
        jobs = []
        for chunk, recs in by_chunk.items():
            recs.sort()
            jobs.append((chunk, recs))
            self.stats["range_gets"] += count_requests([(o, o + n) for o, n, _ in recs])

        def run(job):
            chunk, recs = job
            path = self.index.chunks[chunk][0]
            try:
                return get_ranges(self.store, path, [o for o, _, _ in recs],
                                  [o + n for o, n, _ in recs])
            except BaseException as exc:
                if not _client_error(exc):
                    raise
                if _is_missing(exc) or _is_range_error(exc) or \
                        type(exc).__name__ == "PanicException":
                    self._fault(FileNotFoundError(f"{path}: {exc}"), "reading")
                    return None
                raise

        if len(jobs) == 1:
            results = [run(jobs[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
                results = list(pool.map(run, jobs))
        out = []
        for (chunk, recs), bufs in zip(jobs, results, strict=True):
            if bufs is None:
                continue
            path, segment = self.index.chunks[chunk]
            for (_off, length, seg_off), buf in zip(recs, bufs, strict=True):
                try:
                    k0, k1, word, shape, total, data = _C.parse_record(buf, segment, seg_off)
                except (_C.StoreCorruptError, _C.StoreZstdError) as exc:
                    self.stats["bad_records"] += 1
                    self._warn_once("corrupt", "remote cache %s: a record of %s failed its "
                                    "check (%s); it is not served, the item is computed",
                                    self.url, path, exc)
                    continue
                if total != length:
                    self.stats["bad_records"] += 1
                    continue
                out.append((k0, k1, word, shape, data))
        self.stats["records_fetched"] += len(out)
        return out

    def _store_local(self, tier: Any, records, lock: Any) -> int:
        groups: Dict[Tuple[int, tuple], List[Tuple[int, int, bytes]]] = {}
        for k0, k1, word, shape, data in records:
            groups.setdefault((word, shape), []).append((k0, k1, data))
        stored = 0
        for (word, shape), items in groups.items():
            try:
                dtype = self._dtype_of_word(word)
            except RuntimeError:
                continue
            keys = torch.tensor([[k0, k1] for k0, k1, _ in items], dtype=torch.int64)
            raw = bytearray(b"".join(d for _, _, d in items))
            src = torch.frombuffer(raw, dtype=torch.uint8) if raw else \
                torch.empty(0, dtype=torch.uint8)
            src = src.view(dtype).reshape(len(items), *shape)
            with self._lock:
                self._filled.update((k0, k1) for k0, k1, _ in items)
            with lock:
                stored += int(tier.put(keys, src))
        self.stats["records_filled"] += stored
        return stored

    def fetch_layout(self, name: str, local_path: str) -> bool:
        """Copies layout sidecar `name` from the remote to local_path; True if done."""
        if time.monotonic() < self._down_until:
            return False
        try:
            data = get_bytes(self.store, self.prefix + name)
        except BaseException as exc:
            if not _client_error(exc):
                raise
            if not _is_missing(exc):
                self._fault(exc, "reading a layout")
            return False
        from .sidecar import write_json_atomic  # the same atomic write as cache.py's
        import json

        try:
            obj = json.loads(bytes(data))
            os.makedirs(os.path.dirname(local_path), exist_ok=True)
            write_json_atomic(local_path, obj)
        except (ValueError, OSError, TypeError):
            return False
        return True

    # -- writers (run in the uploader thread) ---------------------------------------

    def notify(self) -> None:
        """Called after a put: new records may be ready to seal."""
        self._writer_pid = os.getpid()
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        _uploader.wake()

    def _own_segments(self) -> List[Tuple[str, int]]:
        host, pid = _host(), str(os.getpid())
        out = []
        try:
            with os.scandir(self.local_dir) as it:
                for entry in it:
                    m = _SEGMENT.match(entry.name)
                    if m and m.group(1) == host and m.group(2) == pid and \
                            entry.is_file(follow_symlinks=False):
                        out.append((entry.name, entry.stat(follow_symlinks=False).st_size))
        except OSError:
            return []
        return out

    def upload_step(self, final: bool) -> bool:
        """Seal and upload what is due; True if nothing is left to do now."""
        if self._writer_pid != os.getpid():
            return True  # nothing stored by this process (a reader, or a forked child)
        if final and self.gave_up and _exiting:
            return True  # gave up (and said so) at an earlier flush: exit does not wait again
        now = time.monotonic()
        if now < self._retry_at:
            if not final:
                return False
            time.sleep(min(self._retry_at - now, 1.0))
        due_by_age = self._pending_since is not None and now - self._pending_since >= SEAL_S
        try:
            self._upload_layouts()
            done = True
            for name, size in self._own_segments():
                start = self._sealed.get(name, 0)
                if size <= start:
                    continue
                if final or due_by_age or size - start >= CHUNK_BYTES:
                    if not self._upload_chunk(name, start, size):
                        done = False
                else:
                    done = False
            if done:
                self._pending_since = None
                self.gave_up = False
            self._upload_backoff = 0.5
            self._final_failures = 0
            return done
        except BaseException as exc:
            if not _client_error(exc):
                raise
            self.stats["upload_errors"] += 1
            self._retry_at = time.monotonic() + self._upload_backoff
            self._upload_backoff = min(self._upload_backoff * 2, _BACKOFF_MAX_S)
            self._warn_once("upload", "remote cache %s: upload failed (%s); the local copy is "
                            "kept and the upload retried with back-off", self.url, exc)
            if final:
                # At exit (or flush), a remote that fails twice is given up on: the
                # process must end; what is not uploaded stays in the local directory.
                self._final_failures += 1
                if self._final_failures >= 2:
                    self._final_failures = 0
                    self.gave_up = True
                    self._warn_once("gave-up", "remote cache %s: gave up uploading; the "
                                    "rest stays in the local directory only", self.url)
                    return True
            return False

    def _upload_layouts(self) -> None:
        try:
            names = [n for n in os.listdir(self.local_dir) if _LAYOUT.match(n)]
        except OSError:
            return
        for name in names:
            if name in self._uploaded_layouts:
                continue
            try:
                with open(os.path.join(self.local_dir, name), "rb") as f:
                    data = f.read()
            except OSError:
                continue
            put_create(self.store, self.prefix + name, data)
            self._uploaded_layouts.add(name)

    def _upload_chunk(self, name: str, start: int, size: int) -> bool:
        """Uploads the whole records of `name` in [start, size) (at most _MAX_CHUNK_READ
        bytes) that this process computed, then their index; True when it reached size."""
        end = min(size, start + _MAX_CHUNK_READ)
        try:
            with open(os.path.join(self.local_dir, name), "rb") as f:
                f.seek(start)
                data = memoryview(f.read(end - start))
        except OSError:
            return False
        pos, rows, pieces, obj_off = 0, [], [], 0
        with self._lock:
            filled = set(self._filled)
        while pos < len(data):
            try:
                k0, k1, _, _, total, _ = _C.parse_record(data, name, start + pos, pos)
            except _C.StoreCorruptError:
                # A record still being written (it ends past what we read), or damage:
                # retry at the next step; past damage that stays, look for the next
                # header at the following 64-byte boundaries.
                skip = self._skip_damage(name, start + pos, size, data, pos)
                if skip is None:
                    break
                pos = skip
                continue
            if (k0, k1) not in filled:
                rows.append((k0, k1, start + pos, obj_off, total))
                pieces.append(data[pos:pos + total])
                obj_off += total
            pos += total
            if obj_off >= CHUNK_BYTES:
                break  # chunks stay near the threshold; the rest is the next one
        sealed_to = start + pos
        if rows:
            table = torch.tensor(rows, dtype=torch.int64)
            chunk_name = f"{self.prefix}c-{name}-{start:016x}"
            put_create(self.store, chunk_name, b"".join(pieces))
            put_create(self.store, f"{self.prefix}i-{name}-{start:016x}",
                       encode_index(name, obj_off, table))
            self.stats["chunks_uploaded"] += 1
            self.stats["bytes_uploaded"] += obj_off
        if sealed_to > start:
            self._sealed[name] = sealed_to
        return sealed_to >= size

    def _skip_damage(self, name: str, offset: int, size: int, data: memoryview,
                     pos: int) -> Optional[int]:
        seen = self._bad_at.get(name)
        self._bad_at[name] = (offset, size)
        if seen is None or seen[0] != offset or seen[1] == size:
            return None  # first sight, or the file has not grown: maybe a write in progress
        for p in range(pos + 64, len(data) - 127, 64):
            try:
                _C.parse_record(data, name, offset - pos + p, p, payload=False)
                return p
            except _C.StoreCorruptError:
                continue
        return None


# ---- the uploader thread --------------------------------------------------------------

class _Uploader:
    """One daemon thread per process that seals and uploads every tier's new records:
    forward never waits for it.  Work is bounded by construction: what is pending is a
    byte range of a local segment (kept on disk until its upload is confirmed), not a
    buffer, and one step uploads at most one chunk per segment."""

    def __init__(self) -> None:
        self._tiers: "weakref.WeakSet[RemoteTier]" = weakref.WeakSet()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._final = False
        self._idle = True

    def register(self, tier: RemoteTier) -> None:
        with self._cond:
            self._tiers.add(tier)
        # Registered again at each new tier so that it runs before atexit handlers of
        # what was set up earlier (cache.py's removal of a private directory).
        atexit.unregister(flush_at_exit)
        atexit.register(flush_at_exit)
        _register_in_worker()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="torchcache_c-uploader",
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        with self._cond:
            self._ensure_thread()
            self._idle = False
            self._cond.notify_all()

    def _run(self) -> None:
        finished: Set[int] = set()  # tiers done in this final round
        while True:
            with self._cond:
                if self._idle and not self._final:
                    self._cond.wait(timeout=min(SEAL_S, 5.0))
                final = self._final
                tiers = list(self._tiers)
            done = True
            for tier in tiers:
                if final and id(tier) in finished:
                    continue
                ok = tier.upload_step(final)
                if ok and final:
                    finished.add(id(tier))
                done &= ok
            # Hold no tier while waiting for the next round: a dropped cache's tier
            # (and its object-store client) goes with its module, not seconds later.
            tiers = tier = None
            with self._cond:
                self._idle = done
                if final and done:
                    self._final = False
                    self._cond.notify_all()
                    return
            if not done:
                time.sleep(0.05)

    def flush(self, timeout: float) -> bool:
        """Seal and upload everything now; waits at most `timeout` seconds.  True if all
        of it was uploaded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if not list(self._tiers):
                return True
            self._ensure_thread()
            self._final = True
            self._cond.notify_all()
            while self._final:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    break
                self._cond.wait(timeout=left)
            return not self._final and not any(t.gave_up for t in self._tiers)


_uploader = _Uploader()


def flush(timeout: float = FLUSH_S) -> bool:
    """Upload every sealed and unsealed record of this process now (waits at most
    `timeout` seconds); True if everything was uploaded.  Call it before a barrier after
    which other nodes should find this process's outputs in the remote."""
    return _uploader.flush(timeout)


_exiting = False


def flush_at_exit() -> None:
    global _exiting
    if _uploader._pid != os.getpid():
        return
    _exiting = True
    if not flush(FLUSH_S) and _uploader._final:
        # Timed out.  A remote that was given up on has said so in its own warning.
        logger.warning("remote cache: not everything was uploaded at exit (a remote that "
                       "fails, or more than %.0f s of uploads); the rest stays in the local "
                       "directory only", FLUSH_S)


_worker_finalizer: List[Any] = []


def _register_in_worker() -> None:
    """multiprocessing children (DataLoader workers) end with os._exit, which skips
    atexit; multiprocessing runs its own finalizers first, so flush from one of those."""
    import multiprocessing
    import multiprocessing.util

    if multiprocessing.parent_process() is None:
        return
    if _worker_finalizer and _worker_finalizer[0][0] == os.getpid():
        return
    _worker_finalizer[:] = [(os.getpid(), multiprocessing.util.Finalize(
        None, flush_at_exit, exitpriority=100))]


def attach(url: str, local_dir: str, module_key: str, refresh_s: float,
           dtype_of_word: Callable[[int], torch.dtype]) -> Optional[RemoteTier]:
    """The remote tier of one module-key directory, or None (with a WARNING) when the
    client cannot be set up from the URL and the environment."""
    try:
        return RemoteTier(url, local_dir, module_key, refresh_s, dtype_of_word)
    except Exception as exc:
        logger.warning("remote cache %s cannot be used (%s); the local cache goes on alone",
                       url, exc)
        return None


def _reinit_in_child() -> None:
    global _uploader
    tiers = list(_uploader._tiers)
    _uploader = _Uploader()
    for tier in tiers:
        tier._lock = threading.Lock()
        tier._sealed = {}
        _uploader._tiers.add(tier)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_in_child)


# ---- the CLI on a remote URL (cli.py: info, verify, prune) ----------------------------

class RemoteModule:
    """One module key's objects in the remote (the fields cli._plan_prune reads)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.path = key
        self.bytes = 0
        self.last_used = 0.0
        self.chunks: Dict[str, int] = {}   # name -> size
        self.indexes: Dict[str, int] = {}
        self.layouts: List[str] = []
        self.other: List[str] = []
        self.meta = None
        self.foreign: List[str] = []

    @property
    def records(self) -> int:
        total = 0
        for name, size in self.indexes.items():
            m = _INDEX_NAME.match(name)
            seg_len = len(m.group(1).encode()) if m else 0
            head = _INDEX_HEAD.size + seg_len
            head += -head % 8
            total += max(0, (size - head) // 40)
        return total

    @property
    def orphans(self) -> List[str]:
        """Chunks without an index (a writer stopped between its two PUTs)."""
        return [c for c in self.chunks if "i" + c[1:] not in self.indexes]

    @property
    def objects(self) -> List[str]:
        return [f"{self.key}/{n}" for n in
                list(self.chunks) + list(self.indexes) + self.layouts + self.other]


def scan_remote(url: str) -> List[RemoteModule]:
    store = open_store(url)
    modules: Dict[str, RemoteModule] = {}
    for meta in list_objects(store, ""):
        key, _, name = meta["path"].partition("/")
        if not name or "/" in name:
            continue
        m = modules.setdefault(key, RemoteModule(key))
        size = int(meta["size"])
        m.bytes += size
        modified = meta.get("last_modified")
        if modified is not None:
            m.last_used = max(m.last_used, modified.timestamp())
        if name.startswith("c-seg-"):
            m.chunks[name] = size
        elif name.startswith("i-seg-"):
            m.indexes[name] = size
        elif _LAYOUT.match(name):
            m.layouts.append(name)
        else:
            m.other.append(name)
    return [modules[k] for k in sorted(modules)]


def cli_info(url: str) -> Dict[str, Any]:
    modules = scan_remote(url)
    return {"url": url, "modules": [
        {"module_key": m.key, "entries": m.records, "bytes": m.bytes, "chunks": len(m.chunks),
         "indexes": len(m.indexes), "orphan_chunks": len(m.orphans),
         "layouts": len(m.layouts), "last_modified": m.last_used} for m in modules]}


def cli_verify(url: str) -> Dict[str, Any]:
    """Every record of every indexed chunk checked as a reader would (C), plus chunks
    that are missing, cut short or without an index."""
    store = open_store(url)
    results = []
    for m in scan_remote(url):
        problems: List[Dict[str, Any]] = []
        records = nbytes = 0
        for name in sorted(m.indexes):
            match = _INDEX_NAME.match(name)
            if match is None:
                continue
            segment, start = match.group(1), match.group(2)
            chunk = f"c-{segment}-{start}"
            try:
                parsed = decode_index(get_bytes(store, f"{m.key}/{name}"), segment)
            except BaseException as exc:
                if not _client_error(exc):
                    raise
                problems.append({"object": name, "reason": f"cannot read: {exc}"})
                continue
            if parsed is None:
                problems.append({"object": name, "reason": "not a valid index"})
                continue
            chunk_bytes, table = parsed
            if m.chunks.get(chunk) != chunk_bytes:
                problems.append({"object": chunk, "reason": "missing" if chunk not in m.chunks
                                 else f"{m.chunks[chunk]} bytes, its index says {chunk_bytes}"})
                continue
            data = get_bytes(store, f"{m.key}/{chunk}")
            for k0, k1, seg_off, obj_off, length in table.tolist():
                try:
                    got = _C.parse_record(data[obj_off:obj_off + length], segment, seg_off)
                    if (got[0], got[1], got[4]) != (k0, k1, length):
                        raise _C.StoreCorruptError("key or length differ from the index")
                    records += 1
                    nbytes += length
                except (_C.StoreCorruptError, _C.StoreZstdError) as exc:
                    problems.append({"object": chunk, "offset": obj_off, "reason": str(exc)})
        for chunk in m.orphans:
            problems.append({"object": chunk, "reason": "no index (never read; prune removes "
                             "it with its module key)", "orphan": True})
        corrupt = sum(1 for p in problems if not p.get("orphan"))
        results.append({"module_key": m.key, "records": records, "bytes": nbytes,
                        "chunks": len(m.chunks), "corrupt": corrupt, "problems": problems})
    return {"url": url, "modules": results,
            "ok": all(r["corrupt"] == 0 for r in results)}


def cli_delete(url: str, module: RemoteModule) -> int:
    """Removes a module key's objects, indexes first (so no reader is sent to a chunk
    that is gone); returns the bytes freed."""
    import obstore

    store = open_store(url)
    names = [f"{module.key}/{n}" for n in module.indexes] + \
        [f"{module.key}/{n}" for n in list(module.chunks) + module.layouts + module.other]
    for i in range(0, len(names), 1000):
        obstore.delete(store, names[i:i + 1000])
    return module.bytes
