import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from torchcache_c import _C  # noqa: E402

if not hasattr(_C, "Store"):
    from _fake_store import Store

    _C.Store = Store


@pytest.fixture
def fresh_name(request):
    return request.node.name
