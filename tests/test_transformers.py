"""Real transformers models (small configs, random weights) behind @torchcache().

Every cached output is compared field by field (None fields included) with an uncached
twin holding the same weights. The twin computes each item the way the cache does: the
items a call has not seen before run as one batch in call order, and the others are what
the earlier call that computed them returned; so the comparison is exact (torch.equal)
even though a model's output for an item may differ in the last bit with the batch it
runs in.
"""
import dataclasses
import json
import weakref

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")

from _helpers import run_python  # noqa: E402
from transformers import (  # noqa: E402
    BatchEncoding,
    BertConfig,
    BertModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    ViTConfig,
    ViTModel,
)
from transformers.utils import ModelOutput  # noqa: E402

from torchcache_c import torchcache  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
MAX_LEN = 12
IMAGE = dict(image_size=16, patch_size=8, num_channels=3)


def bert_config():
    return BertConfig(vocab_size=99, max_position_embeddings=64, **SMALL)


def vit_config():
    return ViTConfig(**SMALL, **IMAGE)


def clip_config():
    return CLIPVisionConfig(projection_dim=16, **SMALL, **IMAGE)


def _frozen(module, cache_dir):
    module.requires_grad_(False)
    module.eval()
    if cache_dir is not None:
        module.torchcache_persistent = True
        module.torchcache_persistent_cache_dir = str(cache_dir)


@torchcache()
class CachedBert(BertModel):
    def __init__(self, config, cache_dir=None):
        super().__init__(config)
        _frozen(self, cache_dir)


@torchcache()
class CachedViT(ViTModel):
    def __init__(self, config, cache_dir=None):
        super().__init__(config)
        _frozen(self, cache_dir)


@torchcache()
class CachedCLIPVision(CLIPVisionModel):
    def __init__(self, config, cache_dir=None):
        super().__init__(config)
        _frozen(self, cache_dir)


class TextEncoder(nn.Module):
    """A wrapper whose forward takes the tokenizer's batch as one argument: m(batch)."""

    def __init__(self, config, cache_dir=None):
        super().__init__()
        self.bert = BertModel(config)
        _frozen(self, cache_dir)

    def forward(self, batch, output_hidden_states=False):
        return self.bert(**batch, output_hidden_states=output_hidden_states)


CachedTextEncoder = torchcache()(TextEncoder)


def twins(cached_cls, plain_cls, config, seed, cache_dir=None):
    """A cached model and an uncached one with the same weights (seeded per test, so that
    no two tests share a module key and with it an in-memory store)."""
    torch.manual_seed(seed)
    ref = plain_cls(config).eval().requires_grad_(False)
    m = cached_cls(config, cache_dir)
    m.load_state_dict(ref.state_dict())
    return m, ref


def text_batch(n, seed):
    """What a tokenizer returns for n texts padded to MAX_LEN: ids, token types, mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, MAX_LEN + 1, (n,), generator=g)
    ids = torch.randint(5, 99, (n, MAX_LEN), generator=g)
    mask = (torch.arange(MAX_LEN) < lengths[:, None]).long()
    ids = ids * mask
    ids[:, 0] = 2
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}


def images(n, seed):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def rows(batch, index):
    return {k: v[index] for k, v in batch.items()}


# ---- the exact reference ----------------------------------------------------------------

def _item(value, i):
    if isinstance(value, torch.Tensor):
        return value[i]
    if isinstance(value, tuple):
        return tuple(_item(v, i) for v in value)
    assert value is None or isinstance(value, (int, float, str, bool)), type(value)
    return value


def _stack(values):
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, tuple):
        return tuple(_stack([v[k] for v in values]) for k in range(len(first)))
    return first


class Twin:
    """The uncached model's output for each item, computed as the cache computes it."""

    def __init__(self, model):
        self.model = model
        self.items = {}  # item key -> {field: per-item value}
        self.calls = []  # batch sizes forward ran with

    def __call__(self, tensors, run, context=""):
        """tensors: the call's input tensors (for item identity); run(index) calls the
        uncached model on those rows."""
        n = len(tensors[0])
        keys = [context.encode() + b"".join(t[i].numpy().tobytes() for t in tensors)
                for i in range(n)]
        new = [i for i in range(n) if keys[i] not in self.items]
        out_type = None
        if new:
            with torch.no_grad():
                out = run(torch.tensor(new))
            self.calls.append(len(new))
            out_type = type(out)
            names = [f.name for f in dataclasses.fields(out)]
            for j, i in enumerate(new):
                self.items[keys[i]] = (out_type, {k: _item(getattr(out, k), j) for k in names})
        out_type, first = self.items[keys[0]]
        return out_type(**{k: _stack([self.items[key][1][k] for key in keys]) for k in first})


def assert_same_output(out, ref):
    assert type(out) is type(ref), (type(out), type(ref))
    assert isinstance(out, ModelOutput)
    names = [f.name for f in dataclasses.fields(ref)]
    for name in names:
        _assert_equal(getattr(out, name), getattr(ref, name), name)
    assert list(out.keys()) == list(ref.keys())
    assert len(out.to_tuple()) == len(ref.to_tuple())
    for i, (a, b) in enumerate(zip(out.to_tuple(), ref.to_tuple(), strict=False)):
        _assert_equal(a, b, f"to_tuple()[{i}]")
    assert torch.equal(out[0], ref[0]) and torch.equal(out.last_hidden_state, ref[0])
    assert torch.equal(out["last_hidden_state"], ref.last_hidden_state)


def _assert_equal(a, b, path):
    if b is None:
        assert a is None, f"{path}: {type(a)} where the model returns None"
    elif isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), f"{path}: values differ"
    else:
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=False)):
            _assert_equal(u, v, f"{path}[{i}]")


def forward_sizes(module):
    """Batch sizes that reach the model's embeddings (forward ran on those items).

    Counted by patching the embeddings class in place, not by a hook: a hook is part of
    the module key (a hook changes outputs), and library classes count by version, so
    this patch does not change any key."""
    embeddings = module.embeddings
    cls = type(embeddings)
    if "_sizes_by_module" not in vars(cls):
        original = cls.forward
        registry = weakref.WeakKeyDictionary()

        def counting(self, *args, **kwargs):
            sizes = registry.get(self)
            if sizes is not None:
                first = args[0] if args else next(v for v in kwargs.values() if v is not None)
                sizes.append(first.shape[0])
            return original(self, *args, **kwargs)

        cls.forward = counting
        cls._sizes_by_module = registry
    sizes = []
    cls._sizes_by_module[embeddings] = sizes
    return sizes


# ---- BERT -------------------------------------------------------------------------------

def test_bert_keyword_batch_default_return_dict_partial_hits():
    m, ref = twins(CachedBert, BertModel, bert_config(), seed=101)
    twin = Twin(ref)
    sizes = forward_sizes(m)
    batch = text_batch(8, seed=1)
    with torch.no_grad():
        for index in (torch.arange(4), torch.arange(8), torch.tensor([6, 1, 3, 0]),
                      torch.arange(8)):
            part = rows(batch, index)
            out = m(**part)
            expected = twin([part[k] for k in batch], lambda i, p=part: ref(**rows(p, i)))
            assert_same_output(out, expected)
    assert sizes == twin.calls == [4, 4]
    assert m.cache_instance.stats()["hits"] == 4 + 4 + 8
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
    assert out.hidden_states is None and out.attentions is None and "hidden_states" not in out


def test_bert_with_hidden_states_keeps_the_tuple_fields():
    m, ref = twins(CachedBert, BertModel, bert_config(), seed=102)
    twin = Twin(ref)
    batch = text_batch(6, seed=2)
    with torch.no_grad():
        for index in (torch.arange(0, 6, 2), torch.arange(6)):
            part = rows(batch, index)
            out = m(**part, output_hidden_states=True)
            expected = twin(list(part.values()), lambda i, p=part: ref(
                **rows(p, i), output_hidden_states=True))
            assert_same_output(out, expected)
            assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) == 3
        plain = m(**batch)  # another call context: hidden states are not served
    assert plain.hidden_states is None and "hidden_states" not in plain


@pytest.mark.parametrize("wrap", [dict, BatchEncoding], ids=["dict", "BatchEncoding"])
def test_tokenizer_batch_as_one_argument(wrap):
    seed = 103 if wrap is dict else 104
    m, ref = twins(CachedTextEncoder, TextEncoder, bert_config(), seed=seed)
    twin = Twin(ref)
    sizes = forward_sizes(m.bert)
    batch = text_batch(8, seed=3)
    with torch.no_grad():
        for index in (torch.arange(1, 8, 2), torch.arange(8), torch.arange(8)):
            part = wrap(rows(batch, index))
            out = m(part)
            expected = twin(list(part.values()), lambda i, p=part: ref(wrap(rows(p, i))))
            assert_same_output(out, expected)
    assert sizes == twin.calls == [4, 4]


def test_dict_and_batchencoding_and_key_order_are_different_calls():
    m, _ = twins(CachedTextEncoder, TextEncoder, bert_config(), seed=105)
    batch = text_batch(4, seed=4)
    reordered = {k: batch[k] for k in reversed(list(batch))}
    with torch.no_grad():
        m(batch)
        m(BatchEncoding(batch))
        m(reordered)
        m(batch, output_hidden_states=True)
        m(dict(batch))
    stats = m.cache_instance.stats()
    assert stats["misses"] == 16 and stats["hits"] == 4


@pytest.mark.slow  # a second interpreter imports torch and transformers
def test_bert_persistent_fresh_process_serves_all_hits_without_forward(tmp_path):
    m, ref = twins(CachedBert, BertModel, bert_config(), seed=106, cache_dir=tmp_path)
    twin = Twin(ref)
    batch = text_batch(6, seed=5)
    with torch.no_grad():
        for index in (torch.arange(3), torch.arange(6)):
            part = rows(batch, index)
            out = m(**part)
            assert_same_output(out, twin(list(part.values()),
                                         lambda i, p=part: ref(**rows(p, i))))
    assert list(tmp_path.glob("*/layout-*.json"))
    torch.save({"batch": batch, "fields": {k: getattr(out, k) for k in out.keys()}},
               tmp_path / "expected.pt")
    child = json.loads(run_python(f"""
        import json, pathlib, torch
        from test_transformers import CachedBert, BertModel, bert_config, forward_sizes, twins
        saved = torch.load({str(tmp_path / "expected.pt")!r})
        from transformers.models.bert import modeling_bert
        m, _ = twins(CachedBert, BertModel, bert_config(), seed=106,
                     cache_dir=pathlib.Path({str(tmp_path)!r}))  # the same init arguments
        # Count forward runs without a hook (a hook is part of the module key): patch
        # the library class in place, which library code counting by version ignores.
        sizes, embed = [], modeling_bert.BertEmbeddings.forward
        def counting(self, *args, **kwargs):
            sizes.append(1)
            return embed(self, *args, **kwargs)
        modeling_bert.BertEmbeddings.forward = counting
        with torch.no_grad():
            out = m(**saved["batch"])
        print(json.dumps({{
            "sizes": sizes, "type": type(out).__qualname__, "keys": list(out.keys()),
            "none": [k for k in ("hidden_states", "attentions", "cross_attentions")
                     if getattr(out, k) is None],
            "equal": all(torch.equal(out[k], v) for k, v in saved["fields"].items()),
        }}))
    """))
    assert child == {
        "sizes": [], "type": "BaseModelOutputWithPoolingAndCrossAttentions",
        "keys": ["last_hidden_state", "pooler_output"],
        "none": ["hidden_states", "attentions", "cross_attentions"], "equal": True}


# ---- vision -------------------------------------------------------------------------------

def test_vit_positional_pixel_values_partial_hits():
    m, ref = twins(CachedViT, ViTModel, vit_config(), seed=107)
    twin = Twin(ref)
    sizes = forward_sizes(m)
    px = images(6, seed=6)
    with torch.no_grad():
        for index in (torch.tensor([0, 2, 4]), torch.arange(6), torch.tensor([5, 4])):
            out = m(px[index])
            assert_same_output(out, twin([px[index]], lambda i, x=px[index]: ref(x[i])))
    assert sizes == twin.calls == [3, 3]
    assert type(out).__name__ == "BaseModelOutputWithPooling"


def test_vit_hidden_states_persistent_tier_shared_by_two_instances(tmp_path):
    first, ref = twins(CachedViT, ViTModel, vit_config(), seed=108, cache_dir=tmp_path)
    second, _ = twins(CachedViT, ViTModel, vit_config(), seed=108, cache_dir=tmp_path)
    twin = Twin(ref)
    px = images(4, seed=7)
    sizes = forward_sizes(second)
    with torch.no_grad():
        for m, index in ((first, torch.arange(2)), (second, torch.arange(4)),
                         (second, torch.arange(4))):
            out = m(pixel_values=px[index], output_hidden_states=True)
            expected = twin([px[index]], lambda i, x=px[index]: ref(
                pixel_values=x[i], output_hidden_states=True))
            assert_same_output(out, expected)
    assert sizes == [2] and twin.calls == [2, 2]
    assert out.attentions is None and len(out.hidden_states) == 3


def test_clip_vision_memory_and_persistent(tmp_path):
    for seed, cache_dir in ((109, None), (110, tmp_path)):
        m, ref = twins(CachedCLIPVision, CLIPVisionModel, clip_config(), seed=seed,
                       cache_dir=cache_dir)
        twin = Twin(ref)
        sizes = forward_sizes(getattr(m, "vision_model", m))  # transformers < 5 nests it
        px = images(6, seed=8)
        with torch.no_grad():
            for index in (torch.arange(3, 6), torch.arange(6), torch.arange(6)):
                out = m(pixel_values=px[index])
                assert_same_output(out, twin([px[index]], lambda i, x=px[index], r=ref: r(
                    pixel_values=x[i])))
        assert sizes == twin.calls == [3, 3]
        assert (m.cache_instance.cache_dir is None) == (cache_dir is None)
    assert type(out).__name__ == "BaseModelOutputWithPooling"
