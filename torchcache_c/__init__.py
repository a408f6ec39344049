"""torchcache_c: a per-item output cache for frozen PyTorch modules, with a C core."""

from ._version import __version__
from ._C import build_info as _c_build_info
from .hashing import hash_tensor


def build_info() -> dict:
    """Describe this build (version, compiler, SIMD level, CUDA kernels, zstd)."""
    return _c_build_info()


__all__ = ["__version__", "build_info", "hash_tensor"]
