import pytest

from torchcache_c import _C, build_info

SIMD_LEVELS = [lvl for lvl in ("portable", "avx2", "avx512")
               if ["portable", "avx2", "avx512"].index(lvl)
               <= ["portable", "avx2", "avx512"].index(build_info()["simd_best"])]


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    """Run the test once per SIMD level this CPU has, restoring the best after."""
    _C._set_simd(request.param)
    yield request.param
    _C._set_simd(build_info()["simd_best"])
