"""Typing stub of torchcache_c._C, the C core (csrc/module.c, csrc/store_module.c,
csrc/call.c).

Tensors are taken through DLPack (``__dlpack__``), so any object that exports
it is accepted; ``torch.Tensor`` is what the shim passes.
"""

from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypedDict, Union, overload
import os

_Tensor = Any  # a torch.Tensor, or any object with __dlpack__

class _BuildInfo(TypedDict):
    version: str
    compiler: str
    simd: str
    simd_best: str
    cuda_kernels: bool
    cuda_kernel_kinds: List[str]
    zstd: bool
    zstd_version: str
    hash: str

class _StoreStats(TypedDict):
    records: int
    segments: int
    corrupt: int
    bytes_written: int
    records_written: int
    bytes_indexed: int
    refreshes: int
    readdirs: int
    idle_rechecks: int
    skipped: int
    gone: int
    open_fds: int
    # io, short_read, open, directory, nomem, changed, mismatch, zstd, write, insecure,
    # foreign_owner
    faults: Dict[str, int]
    full: bool
    io_error: Optional[str]

class _CompactResult(TypedDict):
    segments: int
    live: int
    removed: int
    kept: int
    records: int
    bytes: int
    duplicates: int
    dropped: int
    merged: Optional[str]

class _StoreVerify(TypedDict):
    records: int
    corrupt: int
    bytes: int
    torn: int
    segments: int
    problems: List[Tuple[str, int, str]]  # (segment file name, offset, reason)

class StoreError(OSError): ...
class StoreClosedError(StoreError, ValueError): ...
class StoreKeyError(StoreError, KeyError): ...
class StoreCorruptError(StoreError, KeyError): ...
class StoreMismatchError(StoreError, ValueError): ...
class StoreZstdError(StoreError, RuntimeError): ...
class StorePermissionError(StoreError, PermissionError): ...

@overload
def hash_into(
    x: _Tensor,
    out: _Tensor,
    sample_count: int = 0,
    stream: int = 0,
    threads: int = 1,
) -> None: ...
@overload
def hash_into(
    x: _Tensor,
    out: None,
    sample_count: int = 0,
    stream: int = 0,
    threads: int = 1,
) -> Any: ...
def build_info() -> _BuildInfo: ...
def call_fetch(
    store: "Store",
    inputs: Union[Sequence[_Tensor], bytes],
    ctx: bytes,
    leaves: Optional[bytes],
    sample_count: int,
    threads: int,
    /,
) -> Optional[Tuple[bytes, int, Optional[bytes], Optional[Tuple[Any, ...]]]]: ...
def call_put(
    store: "Store", keys: bytes, rows: Optional[bytes], leaves: bytes,
    srcs: Union[Tuple[_Tensor, ...], List[_Tensor]], /
) -> int: ...
def _set_tensor_exporter(fn: Optional[Any], /) -> None: ...
def _set_simd(level: str) -> None: ...
def _threads_runtime(allow_openmp: Optional[bool] = None) -> str: ...
def compact(
    path: Union[str, bytes, os.PathLike[str], os.PathLike[bytes]], min_idle_s: int = 3600
) -> _CompactResult: ...
# issue 15 (docs/remote.md): a record fetched from an object store, checked as a local read.
def parse_record(
    buf: Union[bytes, bytearray, memoryview],
    segment: str,
    offset: int,
    pos: int = 0,
    payload: bool = True,
) -> Tuple[int, int, int, Tuple[int, ...], int, Optional[bytes]]: ...
def segment_id(name: str) -> int: ...

class Store:
    def __new__(
        cls,
        path: Union[str, bytes, os.PathLike[str], os.PathLike[bytes], None] = None,
        *,
        max_bytes: int = 0,
        zstd_level: Optional[int] = None,
        zstd_threads: int = 0,
        refresh_ms: int = 100,
        strict: bool = False,
        allow_other_owners: bool = False,
        file_mode: int = 0o666,
        dir_mode: int = 0o777,
    ) -> "Store": ...
    def lookup(self, keys: _Tensor, /) -> bytes: ...
    def entry_info(self, keys: _Tensor, i: int, /) -> Tuple[int, Tuple[int, ...]]: ...
    def gather(self, keys: _Tensor, dest: _Tensor, /) -> bytes: ...
    def put(self, keys: _Tensor, src: _Tensor, /) -> int: ...
    def refresh(self) -> int: ...
    def stats(self) -> _StoreStats: ...
    def take_faults(self) -> Dict[str, str]: ...
    def verify(self) -> _StoreVerify: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Store": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
        /,
    ) -> None: ...
    @property
    def is_full(self) -> bool: ...
    @property
    def io_error(self) -> Optional[str]: ...
    @property
    def path(self) -> Optional[str]: ...
    @property
    def closed(self) -> bool: ...

class Watch:
    """The per-call check of a module key (csrc/watch_module.c, docs/keys.md section 4)."""
    def __init__(self) -> None: ...
    def reset(self, dicts: Sequence[dict], tensors: Sequence[Any], grad_tensors: Sequence[Any],
              version_descr: Any, requires_grad_descr: Any) -> None: ...
    def changed(self, check_grad: bool) -> int: ...
