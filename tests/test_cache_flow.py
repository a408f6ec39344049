"""One cached call: hits, misses, outputs, arguments, errors, limits, threads, compile."""
import logging
import threading

import pytest
import torch
import torch.nn as nn

from torchcache_c import torchcache


class Encoder(nn.Module):
    def __init__(self, d_in=6, d_out=4):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        g = torch.Generator().manual_seed(0)  # same weights in every instance
        self.lin.weight.data = torch.randn(d_out, d_in, generator=g)
        self.lin.bias.data = torch.randn(d_out, generator=g)
        self.requires_grad_(False)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.lin(x).tanh()


CachedEncoder = torchcache()(Encoder)


def test_hits_skip_forward():
    m, x = CachedEncoder(), torch.randn(8, 6)
    with torch.no_grad():
        m(x), m(x), m(x[2:5])
    assert m.sizes == [8]
    assert m.cache_instance.stats()["hits"] == 11


def test_misses_run_as_one_smaller_batch():
    m, x = CachedEncoder(), torch.randn(8, 6)
    with torch.no_grad():
        m(x[:5])
        m(x)
    assert m.sizes == [5, 3]


def test_outputs_equal_uncached_outputs_exactly():
    m, ref = CachedEncoder(), Encoder()
    x = torch.randn(16, 6)
    with torch.no_grad():
        first = m(x[::2])
        mixed = m(x)
        again = m(x)
        assert torch.equal(first, ref(x[::2]))  # all misses: the module's own output
        assert torch.equal(mixed[::2], first)  # hits: the stored values, bit for bit
        # misses ran as one (gathered, contiguous) batch
        assert torch.equal(mixed[1::2], ref(x[1::2].contiguous()))
    assert torch.equal(mixed, again)


def test_integer_token_ids_give_exact_float_embeddings():
    @torchcache()
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.emb = nn.Embedding(100, 8)
            self.requires_grad_(False)

        def forward(self, ids):
            return self.emb(ids).mean(1) * 1.2345

    m = Tok()
    ids = torch.randint(0, 100, (5, 7))
    first, second = m(ids), m(ids)
    expected = m.emb(ids).mean(1) * 1.2345
    assert second.dtype == torch.float32
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_tuple_and_dict_outputs_keep_structure_and_dtypes():
    @torchcache()
    class Multi(nn.Module):
        def forward(self, x):
            return {"mean": x.mean(1), "parts": (x.double(), [x.argmax(1)])}

    m, x = Multi(), torch.randn(4, 3)
    m(x[:2])
    out = m(x)
    assert set(out) == {"mean", "parts"} and isinstance(out["parts"], tuple)
    assert isinstance(out["parts"][1], list)
    assert out["parts"][0].dtype == torch.float64 and out["parts"][1][0].dtype == torch.int64
    assert torch.equal(out["parts"][0], x.double()) and torch.equal(out["mean"], x.mean(1))
    assert torch.equal(out["parts"][1][0], x.argmax(1))


def test_unsupported_output_type_raises_on_first_call():
    @torchcache()
    def bad(x):
        return {1: x}

    with pytest.raises(TypeError, match="tuples/lists/dicts"):
        bad(torch.ones(2, 2))


def test_non_tensor_arguments_are_in_the_key():
    @torchcache()
    def scale(x, factor, mode="a"):
        return x * factor if mode == "a" else x - factor

    x = torch.ones(3, 2)
    assert torch.equal(scale(x, 2), x * 2)
    assert torch.equal(scale(x, 3), x * 3)
    assert torch.equal(scale(x, 3, mode="b"), x - 3)
    assert torch.equal(scale(x, 2.0), x * 2)


def test_unsupported_argument_type_raises_type_error_naming_it():
    @torchcache()
    def f(x, opts):
        return x

    with pytest.raises(TypeError, match="'opts'.*object"):
        f(torch.ones(2, 1), opts=object())


def test_input_requiring_grad_raises_value_error():
    m = CachedEncoder()
    with pytest.raises(ValueError, match="cannot carry gradients"):
        m(torch.randn(2, 6, requires_grad=True))
    with torch.no_grad():
        m(torch.randn(2, 6, requires_grad=True))


def test_batch_size_mismatch_and_missing_tensor_raise_value_error():
    @torchcache()
    def add(x, y):
        return x + y

    with pytest.raises(ValueError, match="leading batch size"):
        add(torch.ones(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="tensor argument"):
        add(1, 2)


@pytest.mark.parametrize("known", [False, True])
def test_output_without_the_batch_as_leading_dimension_raises(known):
    # known: the call's output layout was seen before (one tensor of this dtype), which
    # takes the shim's short path for a known one-tensor output; it checks the same.
    bad = {"out": None}

    @torchcache()
    def f(x):
        return bad["out"] if bad["out"] is not None else x * 2

    if known:
        f(torch.ones(2, 3))
    bad["out"] = torch.ones(5, 3)
    with pytest.raises(ValueError, match="must have the batch size 2 as its leading"):
        f(torch.zeros(2, 3))
    bad["out"] = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"output leaf 0 has shape \(\)"):
        f(torch.zeros(2, 3))
    bad["out"] = torch.ones(2, 3, dtype=torch.float64)  # another dtype than before
    if known:
        with pytest.raises(RuntimeError, match="different output structure or dtype"):
            f(torch.zeros(2, 3))
    else:
        assert f(torch.zeros(2, 3)).dtype == torch.float64


def test_one_dimensional_input_is_a_batch_of_scalars():
    @torchcache()
    def sq(x):
        return x * x

    x = torch.arange(5.0)
    assert torch.equal(sq(x), x * x) and torch.equal(sq(x.flip(0)), (x * x).flip(0))


def test_keyword_tensor_arguments_are_indexed_for_misses():
    @torchcache()
    def mix(x, *, y):
        return x + 2 * y

    x, y = torch.randn(6, 2), torch.randn(6, 2)
    mix(x[:3], y=y[:3])
    assert torch.allclose(mix(x, y=y), x + 2 * y)


def test_cache_dtype_changes_storage_not_returned_dtype():
    m = torchcache(cache_dtype=torch.float16)(Encoder)()
    x = torch.randn(4, 6)
    with torch.no_grad():
        a, b = m(x), m(x)
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(a, Encoder()(x).half().float())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _record_bytes(**options):
    """Bytes one stored item takes (header and padded payload), read from an unlimited
    store's counters so the limit tests do not hard-code the record format."""
    m = torchcache(**options)(Encoder)()
    with torch.no_grad():
        m(torch.randn(1, 6))  # opens the store (memory stores are shared by instances)
        before = m.cache_instance.stats()["store"]["bytes_written"]
        m(torch.randn(1, 6))
    return m.cache_instance.stats()["store"]["bytes_written"] - before


def _fill_one_by_one(m, x, fits):
    """Store the rows of ``x`` one call at a time into a cache whose limit holds exactly
    ``fits`` records; then check which rows are still served and that the store stayed
    within its limit and said so once."""
    records = _Records()
    logging.getLogger("torchcache_c").addHandler(records)
    try:
        with torch.no_grad():
            for row in x.split(1):
                m(row)
            del m.sizes[:]
            out = m(x)
    finally:
        logging.getLogger("torchcache_c").removeHandler(records)
    # The first `fits` rows (a limit of exactly their bytes admits them all) are hits,
    # served as stored; every later row was refused and is computed again, as one batch.
    assert m.sizes == [len(x) - fits]
    ref = Encoder()
    with torch.no_grad():  # (copies: a view's alignment may change the float result)
        expected = [ref(row.clone()) for row in x[:fits].split(1)] + [ref(x[fits:].clone())]
    assert torch.equal(out, torch.cat(expected))
    stats = m.cache_instance.stats()
    assert stats["items_stored"] == fits and stats["store"]["records"] == fits
    assert sum("cache is full" in msg for msg in records.messages) == 1
    return stats["store"]["bytes_written"]


def test_memory_limit_sets_is_memory_cache_full_and_keeps_working():
    fits = 5
    limit = fits * _record_bytes()
    m = torchcache(max_memory_cache_size=limit)(Encoder)()
    assert _fill_one_by_one(m, torch.randn(9, 6), fits) == limit
    assert m.cache_instance.is_memory_cache_full
    assert not m.cache_instance.is_persistent_cache_full


def test_persistent_limit_sets_is_persistent_cache_full_and_keeps_working(tmp_path):
    fits = 5
    limit = fits * _record_bytes(persistent=True, persistent_cache_dir=str(tmp_path / "probe"))
    m = torchcache(persistent=True, persistent_cache_dir=str(tmp_path / "c"),
                   max_persistent_cache_size=limit)(Encoder)()
    assert _fill_one_by_one(m, torch.randn(9, 6), fits) == limit
    assert m.cache_instance.is_persistent_cache_full
    assert not m.cache_instance.is_memory_cache_full
    segments = list((tmp_path / "c").rglob("seg-*"))
    assert segments and sum(f.stat().st_size for f in segments) == limit


def test_limit_below_one_record_stores_nothing_and_keeps_working():
    m = torchcache(max_memory_cache_size=_record_bytes() - 1)(Encoder)()
    assert _fill_one_by_one(m, torch.randn(3, 6), 0) == 0
    assert m.cache_instance.is_memory_cache_full


def test_two_threads_get_correct_results():
    m, ref = CachedEncoder(), Encoder()
    xs = [torch.randn(32, 6) for _ in range(4)]
    errors = []

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(30):
                x = xs[torch.randint(0, 4, (1,), generator=g).item()]
                idx = torch.randperm(32, generator=g)[:12]
                # A cached row was computed in whatever miss batch it first met, and a
                # linear layer's rounding depends on the batch's size: equal up to
                # float32 rounding (outputs near 0 need an absolute tolerance), while a
                # wrong row (another item's, or garbage) is off by far more.
                if not torch.allclose(m(x[idx]), ref(x[idx]), rtol=1e-5, atol=1e-6):
                    errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors


def test_torch_compile_eager_backend_runs_model_with_cached_module():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = CachedEncoder()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.backbone(x).relu())

    model = Model()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(5, 6)
    with torch.no_grad():
        expected = model.head(Encoder()(x).relu())
        assert torch.allclose(compiled(x), expected)
        assert torch.allclose(compiled(x), expected)
    assert model.backbone.sizes == [5]


def test_train_and_eval_mode_are_cached_separately():
    @torchcache()
    class Drop(nn.Module):
        def forward(self, x):
            return x * (2.0 if self.training else 1.0)

    m, x = Drop(), torch.ones(2, 2)
    m.eval()
    assert torch.equal(m(x), x)
    m.train()
    assert torch.equal(m(x), 2 * x)


OUTPUT_DTYPES = [name for name in (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)]


@pytest.mark.parametrize("dtype_name", OUTPUT_DTYPES)
@pytest.mark.parametrize("persistent", [False, True])
def test_every_output_dtype_is_served_exactly(dtype_name, persistent, tmp_path):
    dtype = getattr(torch, dtype_name)

    def plain(x):
        raw = (x * 1000).to(torch.int64).remainder(256).to(torch.uint8)
        if dtype is torch.bool:
            return raw.bool()
        size = torch.empty((), dtype=dtype).element_size()
        return raw[:, : (raw.shape[1] // size) * size].view(dtype)

    bits_as = torchcache(persistent=persistent, persistent_cache_dir=str(tmp_path))(plain)
    x = torch.rand(6, 32)
    expected = plain(x).view(torch.uint8)  # the uncached function: the oracle
    first = bits_as(x)
    again = bits_as(x)
    assert first.dtype == again.dtype == dtype and bits_as.cache_instance.stats()["hits"] == 6
    assert first.shape == again.shape == plain(x).shape
    assert torch.equal(first.view(torch.uint8), expected)  # misses: the function's output
    assert torch.equal(again.view(torch.uint8), expected)  # hits: the same bits


def test_autocast_state_is_part_of_the_context():
    from torchcache_c._compat import autocast_state

    assert autocast_state("cpu") == "noautocast"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_state("cpu") == "autocast:torch.bfloat16"
    m, x = CachedEncoder(), torch.randn(4, 6)
    with torch.no_grad():
        m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)
    assert m.sizes == [4, 4]
