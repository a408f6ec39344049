"""Module keys: code, init args, weights, notebooks, processes."""
import linecache
import textwrap

import torch
import torch.nn as nn

from _helpers import run_python
from torchcache_c import torchcache


def _linear_net():
    @torchcache()
    class Lin(nn.Module):
        def __init__(self, d=3):
            super().__init__()
            self.lin = nn.Linear(d, 2)
            self.requires_grad_(False)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.lin(x)

    return Lin


def test_init_args_are_keyed_as_init_receives_them():
    """Lin(3), Lin(d=3) and Lin() (d=3 by default) build the same module: with equal
    weights they share entries. Other arguments give another key."""
    Lin = _linear_net()
    a, b, c = Lin(3), Lin(d=3), Lin()
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    x = torch.randn(4, 3)
    with torch.no_grad():
        out = a(x)
        assert torch.equal(b(x), out) and torch.equal(c(x), out)
    assert a.calls == 1 and b.calls == c.calls == 0
    assert a.cache_instance.module_hash == b.cache_instance.module_hash \
        == c.cache_instance.module_hash

    @torchcache()
    class Scale(nn.Module):
        def __init__(self, k=3):
            super().__init__()
            self.k = float(k)

        def forward(self, x):
            return x * self.k

    three, four = Scale(3), Scale(k=4)
    with torch.no_grad():
        assert torch.equal(three(x), 3 * x) and torch.equal(four(x), 4 * x)
    assert three.cache_instance.module_hash != four.cache_instance.module_hash
    assert Lin(4).cache_instance.module_hash != a.cache_instance.module_hash


def test_weights_loaded_after_init_change_key():
    Lin = _linear_net()
    m = Lin()
    x = torch.randn(4, 3)
    with torch.no_grad():
        before_hash, before = m.cache_instance.module_hash, m(x)
        m.lin.weight.mul_(2)
        after = m(x)
    assert m.cache_instance.module_hash != before_hash
    assert m.calls == 2 and torch.allclose(after, m.lin(x))
    assert not torch.allclose(before, after)


def test_load_state_dict_later_changes_key():
    Lin = _linear_net()
    m, other = Lin(), Lin()
    x = torch.randn(4, 3)
    with torch.no_grad():
        m(x)
        first = m.cache_instance.module_hash
        m.load_state_dict(other.state_dict())
        out = m(x)
    assert m.cache_instance.module_hash != first
    assert torch.equal(out, other.lin(x)) and m.calls == 2


def test_instances_with_different_weights_never_share_entries():
    Lin = _linear_net()
    a, b = Lin(), Lin()
    x = torch.randn(4, 3)
    with torch.no_grad():
        a(x)
        assert torch.equal(b(x), b.lin(x)) and b.calls == 1


def test_instances_with_equal_weights_share_entries():
    Lin = _linear_net()
    a, b = Lin(), Lin()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3)
    with torch.no_grad():
        a(x), b(x)
    assert b.calls == 0


def _define_in_notebook_cell(source: str, filename: str) -> type:
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"nn": nn, "torchcache": torchcache, "__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["Cell"]


CELL = textwrap.dedent("""
    @torchcache()
    class Cell(nn.Module):
        def forward(self, x):
            return x * {factor}
""")


def test_notebook_redefinition_with_changed_code_does_not_reuse_entries():
    x = torch.ones(2, 2)
    old = _define_in_notebook_cell(CELL.format(factor=2), "<ipython-input-1-aaaa>")
    assert torch.equal(old()(x), 2 * x)
    new = _define_in_notebook_cell(CELL.format(factor=3), "<ipython-input-2-bbbb>")
    assert torch.equal(new()(x), 3 * x)


def test_stale_linecache_text_cannot_hide_changed_code():
    # One cell filename reused: linecache then returns the new text for both classes.
    name = "/tmp/ipykernel_1/cell.py"
    old = _define_in_notebook_cell(CELL.format(factor=2), name)
    new = _define_in_notebook_cell(CELL.format(factor=3), name)
    assert old().cache_instance.module_hash != new().cache_instance.module_hash


BASE = """
import torch.nn as nn

class Base(nn.Module):
    def scale(self):
        return {factor}

class Leaf(Base):
    def forward(self, x):
        return x * self.scale()
"""

CHILD = """
import json, torch
from torchcache_c import torchcache
import basemod
calls = []

@torchcache(persistent=True, persistent_cache_dir={cache!r})
class Cached(basemod.Leaf):
    def forward(self, x):
        calls.append(len(x))
        return super().forward(x)

out = Cached()(torch.ones(3, 2))
print(json.dumps({{"calls": calls, "value": out[0, 0].item()}}))
"""


def test_changed_base_class_source_changes_key(tmp_path):
    import json
    cache = tmp_path / "cache"
    (tmp_path / "basemod.py").write_text(BASE.format(factor=2))
    code = CHILD.format(cache=str(cache))
    env = {"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    first = json.loads(run_python(code, cwd=tmp_path, env=env))
    again = json.loads(run_python(code, cwd=tmp_path, env=env))
    (tmp_path / "basemod.py").write_text(BASE.format(factor=5))
    edited = json.loads(run_python(code, cwd=tmp_path, env=env))
    assert first == {"calls": [3], "value": 2.0}
    assert again == {"calls": [], "value": 2.0}
    assert edited == {"calls": [3], "value": 5.0}


def test_module_arguments_count_by_structure_and_code():
    from torchcache_c.keys import _Walk

    canonical = _Walk().module_value

    relu = torch.nn.Sequential(torch.nn.ReLU())
    gelu = torch.nn.Sequential(torch.nn.GELU())
    assert canonical(relu) != canonical(gelu)
    assert canonical(relu) == canonical(torch.nn.Sequential(torch.nn.ReLU()))
    assert canonical(relu) != canonical(torch.nn.Sequential(torch.nn.ReLU()).eval().train(False))
