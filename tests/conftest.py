import sys
from pathlib import Path

import pytest

# Tests import their helpers as top-level modules (and so do their subprocesses).
sys.path.insert(0, str(Path(__file__).parent))

from torchcache_c import _C, build_info  # noqa: E402

_LEVELS = ["portable", "avx2", "avx512"]
SIMD_LEVELS = _LEVELS[: _LEVELS.index(build_info()["simd_best"]) + 1]


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    """Run the test once per SIMD level this CPU has, restoring the best after."""
    _C._set_simd(request.param)
    yield request.param
    _C._set_simd(build_info()["simd_best"])


@pytest.fixture(autouse=True)
def _restore_library_logger():
    """set_logger_config changes the torchcache_c logger (level, handlers, propagate);
    every test starts and ends with it as it was, so caplog keeps capturing."""
    import logging

    logger = logging.getLogger("torchcache_c")
    saved = (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate, logger.disabled = saved[2], saved[3]
