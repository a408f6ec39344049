"""Without libzstd (TORCHCACHE_C_NO_ZSTD=1 makes the extension behave as if it were
missing): compression fails with a message saying how to get it; the rest works."""

from _helpers import run_python

SCRIPT = r"""
import torch, torchcache_c
from torchcache_c import torchcache
from torchcache_c._C import Store
assert torchcache_c.build_info()["zstd"] is False
try:
    Store(TMP + "/z", zstd_level=3)
except RuntimeError as exc:
    assert "apt-get install libzstd1" in str(exc), exc
else:
    raise SystemExit("compression without libzstd did not raise")
s = Store(TMP + "/plain")
keys = torch.tensor([[1, 2]], dtype=torch.int64)
assert s.put(keys, torch.ones(1, 4)) == 1
@torchcache(persistent=True, persistent_cache_dir=TMP + "/dec")
def double(x):
    return x * 2
assert torch.equal(double(torch.ones(3, 2)), torch.full((3, 2), 2.0))
print("ok")
"""


def test_everything_but_compression_works_without_libzstd(tmp_path):
    out = run_python(f"TMP = {str(tmp_path)!r}\n" + SCRIPT, env={"TORCHCACHE_C_NO_ZSTD": "1"})
    assert out.strip().endswith("ok")
