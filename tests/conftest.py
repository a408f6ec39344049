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
