"""torchcache_c: a per-item output cache for frozen PyTorch modules, with a C core."""

from ._version import __version__
from ._C import build_info as _c_build_info
from ._logging import _configure_from_env, set_logger_config
from .decorator import torchcache
from .hashing import hash_tensor


def build_info() -> dict:
    """Describe this build (version, compiler, SIMD level, CUDA kernels, zstd)."""
    return _c_build_info()


_configure_from_env()

__all__ = ["__version__", "build_info", "hash_tensor", "set_logger_config", "torchcache"]
