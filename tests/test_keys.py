"""Never stale: the key covers code and state outside the decorated class (issue 10)."""
import json
import logging
import textwrap

import torch
import torch.nn as nn

from _helpers import run_python
from torchcache_c import torchcache

MODELS = """
import torch
import torch.nn as nn
import helpers

SCALE = {scale}

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.normalize = True

    def forward(self, x):
        y = torch.{act}(self.lin(x)) * SCALE
        y = helpers.post(y)
        return y / y.norm(dim=1, keepdim=True) if self.normalize else y
"""

HELPERS = """
def post(y):
    return y + {offset}
"""

TRAIN = """
import json, torch
import torch.nn as nn
import models
from torchcache_c import torchcache

calls = []

@torchcache(persistent=True, persistent_cache_dir={cache!r})
class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = models.Block()
        self.requires_grad_(False)

    def forward(self, x):
        calls.append(len(x))
        return self.block(x)

torch.manual_seed(1)
x = torch.randn(4, 4)
m = Outer().eval()
with torch.no_grad():
    out = m(x)
    ref = m.block(x)
print(json.dumps({{"calls": calls, "equal": bool(torch.equal(out, ref))}}))
"""


def _project(tmp_path, act="relu", scale=2, offset=0):
    (tmp_path / "models.py").write_text(MODELS.format(act=act, scale=scale))
    (tmp_path / "helpers.py").write_text(HELPERS.format(offset=offset))


def _run(tmp_path):
    env = {"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    return json.loads(run_python(TRAIN.format(cache=str(tmp_path / "cache")), cwd=tmp_path,
                                 env=env))


def test_edits_outside_the_decorated_class_are_never_served_stale(tmp_path):
    _project(tmp_path)
    assert _run(tmp_path) == {"calls": [4], "equal": True}
    assert _run(tmp_path) == {"calls": [], "equal": True}  # unchanged: disk hits
    for edit in ({"act": "tanh"}, {"act": "tanh", "scale": 3},
                 {"act": "tanh", "scale": 3, "offset": 1}):
        _project(tmp_path, **edit)   # submodule class in another file, constant, helper
        assert _run(tmp_path) == {"calls": [4], "equal": True}, edit
        assert _run(tmp_path) == {"calls": [], "equal": True}, edit


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.normalize = True
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        y = self.drop(self.lin(x))
        return y / y.norm(dim=1, keepdim=True) if self.normalize else y


@torchcache()
class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.block(x)


def _uncached(m, x):
    with torch.no_grad():
        return m.block(x)


def test_attribute_set_after_construction_changes_the_key():
    m = Wrapper().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        m.block.normalize = False
        out = m(x)
    assert torch.equal(out, _uncached(m, x)) and m.calls == 2


def test_attribute_that_forward_assigns_does_not_defeat_the_cache():
    m = Wrapper().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x), m(x), m(x)
    assert m.calls == 1 and "calls" in m.cache_instance.keys.forward_written


def test_submodule_switched_to_train_is_not_served_eval_outputs():
    m = Wrapper().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        m.block.drop.train()
        torch.manual_seed(0)
        out = m(x)
        torch.manual_seed(0)
        ref = _uncached(m, x)
    assert m.calls == 2 and torch.equal(out, ref)


def test_weights_written_through_data_are_caught_by_revalidate():
    m = Wrapper().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        m.block.lin.weight.data.mul_(2)   # no version counter moves
        assert m.cache_instance.revalidate()
        out = m(x)
    assert m.calls == 2 and torch.equal(out, _uncached(m, x))


def test_weights_written_through_data_are_caught_by_the_periodic_check(monkeypatch, caplog):
    from torchcache_c import keys

    m = Wrapper().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        m.block.lin.weight.data.mul_(2)
        assert torch.equal(m(x), m(x)) and m.calls == 1     # within the cadence: not seen
        monkeypatch.setattr(keys, "FULL_CHECK_SECONDS", 0.0)
        m.cache_instance.keys._call_time = 1e9
        with caplog.at_level(logging.WARNING, logger="torchcache_c"):
            out = m(x)
    assert m.calls == 2 and torch.equal(out, _uncached(m, x))
    assert m.cache_instance.keys.unseen_changes == 1
    assert "without a visible write" in caplog.text


def test_in_place_write_and_shared_storage_through_version_counter():
    m = Wrapper().eval()
    alias = m.block.lin.weight.view(-1)      # another view of the same storage
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        alias.add_(1)
        out = m(x)
    assert m.calls == 2 and torch.equal(out, _uncached(m, x))


def test_module_moved_or_cast_recomputes_the_key():
    m = Wrapper().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        m.double()
        out = m(x.double())
    assert out.dtype == torch.float64 and torch.equal(out, _uncached(m, x.double()))


def test_forward_hook_on_a_submodule_changes_the_key():
    m = Wrapper().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x)
        m.block.lin.register_forward_hook(lambda mod, inp, out: out + 1)
        out = m(x)
    assert m.calls == 2 and torch.equal(out, _uncached(m, x))


def test_requires_grad_later_is_refused_at_the_call():
    m = Wrapper().eval()
    x = torch.randn(3, 4)
    m(x)
    m.block.lin.weight.requires_grad_(True)
    try:
        m(x)
    except AssertionError as exc:   # TrainableParametersError is one, as in torchcache
        assert "block.lin.weight" in str(exc)
    else:
        raise AssertionError("a parameter requiring grad was not refused")


def test_global_constant_rebound_in_process_changes_the_key():
    namespace = {"__name__": "nb_cell", "torch": torch, "nn": nn, "torchcache": torchcache}
    exec(textwrap.dedent("""
        FACTOR = 2

        @torchcache()
        class Scale(nn.Module):
            def forward(self, x):
                return x * FACTOR
    """), namespace)
    m = namespace["Scale"]()
    x = torch.ones(2, 2)
    assert torch.equal(m(x), 2 * x)
    namespace["FACTOR"] = 5       # a notebook cell re-run with a new value
    assert torch.equal(m(x), 5 * x)


def test_submodule_class_redefined_in_a_notebook_gets_a_new_key():
    namespace = {"__name__": "__main__", "torch": torch, "nn": nn, "torchcache": torchcache}
    block = "class Inner(nn.Module):\n    def forward(self, x):\n        return x * {f}\n"
    outer = textwrap.dedent("""
        @torchcache()
        class Outer(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = Inner()
            def forward(self, x):
                return self.inner(x)
    """)
    x = torch.ones(2, 2)
    exec(block.format(f=2), namespace)
    exec(outer, namespace)
    first = namespace["Outer"]()
    assert torch.equal(first(x), 2 * x)
    exec(block.format(f=3), namespace)   # the submodule's cell, then the decorated cell
    exec(outer, namespace)
    assert torch.equal(namespace["Outer"]()(x), 3 * x)
    assert torch.equal(first(x), 2 * x)  # the old instance still holds the old Inner


def test_library_code_counts_by_distribution_version():
    from torchcache_c.keys import _origin_of

    token = _origin_of(nn.Linear)
    assert token is not None and token.startswith("dist:torch==" + torch.__version__)
    assert _origin_of(Block) is None          # this file is user code: walked
    assert _origin_of(json.dumps) is not None  # standard library


def test_distribution_token_is_name_version_and_record_digest():
    """The token of installed library code: the distribution's name, version and a
    digest of its RECORD (so a reinstall with other files under the same version
    counts), read once per process; a package whose top-level name is not its
    distribution's is found through the installed metadata."""
    import hashlib
    import importlib.metadata

    from torchcache_c.keys import _dist_token, _distributions_of

    dist = importlib.metadata.distribution("torch")
    digest = hashlib.blake2b(dist.read_text("RECORD").encode(), digest_size=8).hexdigest()
    assert _dist_token("torch") == f"dist:torch=={dist.version}#{digest}"
    assert _distributions_of("torch") == ("torch",)
    assert _distributions_of("_pytest") == ("pytest",)  # top level `_pytest`, dist pytest
    assert _dist_token("no-such-distribution-tc") == "dist:no-such-distribution-tc==?"
    assert _distributions_of("no_such_package_tc") == ()


def test_memory_address_repr_warns_and_is_keyed_by_content(caplog, monkeypatch):
    from torchcache_c import keys

    # The warning is given once per kind and process: start from none given, so that the
    # test does not depend on what ran before it in this process (mutmut reruns it).
    monkeypatch.setattr(keys, "_warned_address", set())

    class Opaque:
        __slots__ = ()

    class Config:
        def __init__(self, k):
            self.k = k

    @torchcache()
    class WithArg(nn.Module):
        def __init__(self, thing):
            super().__init__()
            self.thing = thing

        def forward(self, x):
            return x

    with caplog.at_level(logging.WARNING, logger="torchcache_c"):
        a, b = WithArg(Config(1)), WithArg(Config(1))
        c = WithArg(Config(2))
    assert a.cache_instance.module_hash == b.cache_instance.module_hash
    assert a.cache_instance.module_hash != c.cache_instance.module_hash
    assert "memory address" not in caplog.text
    from torchcache_c.keys import _Walk

    with caplog.at_level(logging.WARNING, logger="torchcache_c"):
        _Walk().value(Opaque())
    assert "memory address" in caplog.text


def test_dropout_in_training_mode_warns_once(caplog):
    m = Wrapper().train()
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        m(torch.randn(2, 4)), m(torch.randn(2, 4))
    assert caplog.text.count("active dropout") == 1


def test_memory_size_zero_stores_nothing():
    @torchcache(max_memory_cache_size=0)
    class Zero(Wrapper.__mro__[1]):
        pass

    m = Zero().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        m(x), m(x)
    assert m.calls == 2 and m.cache_instance.stats()["items_stored"] == 0
    assert m.cache_instance.is_memory_cache_full


def test_list_attribute_that_forward_appends_to_is_learned_and_left_out(monkeypatch):
    from torchcache_c import keys

    @torchcache()
    class Logs(nn.Module):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def forward(self, x):
            self.sizes.append(len(x))
            return x + 1

    m = Logs()
    x = torch.ones(2, 2)
    m(x), m(x)
    assert m.sizes == [2] and "sizes" in m.cache_instance.keys.forward_written
    monkeypatch.setattr(keys, "FULL_CHECK_SECONDS", 0.0)
    m.cache_instance.keys._call_time = 1e9
    m(x)      # the periodic check sees no change of what the key covers
    assert m.sizes == [2] and m.cache_instance.keys.unseen_changes == 0


def test_module_level_dict_mutated_in_place_is_seen_by_revalidate():
    namespace = {"__name__": "nb_cfg", "torch": torch, "nn": nn, "torchcache": torchcache}
    exec(textwrap.dedent("""
        CFG = {"scale": 2}

        @torchcache()
        class Scale(nn.Module):
            def forward(self, x):
                return x * CFG["scale"]
    """), namespace)
    m = namespace["Scale"]()
    x = torch.ones(2, 2)
    assert torch.equal(m(x), 2 * x)
    namespace["CFG"]["scale"] = 4
    assert m.cache_instance.revalidate()
    assert torch.equal(m(x), 4 * x)
    namespace["CFG"] = {"scale": 5}     # rebinding: seen at the next call
    assert torch.equal(m(x), 5 * x)


def test_cache_dtype_is_part_of_the_key():
    from ordinary_modules import Backbone

    half = torchcache(cache_dtype=torch.float16)(Backbone)()
    exact = torchcache()(Backbone)()
    x = torch.randn(4, 6)
    with torch.no_grad():
        rounded = half(x)
        out = exact(x)
        ref = Backbone()(x)
    assert not torch.equal(rounded, ref)      # float16-rounded, stored and returned
    assert torch.equal(out, ref)              # never another instance's rounded outputs


def test_tensor_tokens_are_fixed_width_and_carry_quantization_and_layout():
    """The digest words are written as 16 hex digits each (unpadded words could make two
    digests' texts equal); quantized tensors are keyed by their integer values and their
    quantization parameters; a sparse tensor names its layout and is read densely."""
    import re

    from torchcache_c.keys import tensor_digest

    dense = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    token = tensor_digest(dense)
    assert re.fullmatch(r"tensor\(torch\.float32,\(1, 4\),[0-9a-f]{32}\)", token), token
    q = [torch.quantize_per_tensor(dense, s, z, torch.qint8)
         for s, z in ((0.5, 0), (0.25, 0), (0.5, 1))]
    assert len({tensor_digest(t) for t in q}) == 3
    # equal integer values, different scale: different tokens
    assert torch.equal(q[0].int_repr(), torch.quantize_per_tensor(
        dense * 0.5, 0.25, 0, torch.qint8).int_repr())
    assert tensor_digest(q[0]) != tensor_digest(
        torch.quantize_per_tensor(dense * 0.5, 0.25, 0, torch.qint8))
    sparse = dense.to_sparse()
    assert tensor_digest(sparse) != token and tensor_digest(sparse).startswith(token[:-1])
    assert tensor_digest(sparse) == tensor_digest(dense.clone().to_sparse())
