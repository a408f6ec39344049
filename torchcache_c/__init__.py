"""torchcache_c: a per-item output cache for frozen PyTorch modules, with a C core."""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from ._C import build_info as _c_build_info
from ._C import (StoreClosedError, StoreCorruptError, StoreError, StoreKeyError,
                 StoreMismatchError, StorePermissionError, StoreZstdError)
from ._logging import _configure_from_env, set_logger_config

if TYPE_CHECKING:  # type checkers see the real signatures; at run time they load lazily
    from .decorator import torchcache
    from .hashing import hash_tensor

# torch is imported on first use of these names, so `python -m torchcache_c info DIR`
# starts in a fraction of a second.
_LAZY = {"torchcache": ".decorator", "hash_tensor": ".hashing"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchcache_c' has no attribute {name!r}")


def build_info() -> dict:
    """Describe this build (version, compiler, SIMD level, CUDA kernels, zstd)."""
    return _c_build_info()


_configure_from_env()

__all__ = ["__version__", "build_info", "hash_tensor", "set_logger_config", "torchcache",
           "StoreError", "StoreClosedError", "StoreKeyError", "StoreCorruptError",
           "StoreMismatchError", "StorePermissionError", "StoreZstdError"]
