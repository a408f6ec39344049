"""hash_tensor's contract: shape, invariances, dtypes and errors."""

import pytest
import torch

import torchcache_c
from torchcache_c import hash_tensor

ALL_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.float32,
    torch.float64, torch.complex64, torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2,
]


def _rand(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype)
                                 .element_size(),), generator=g, dtype=torch.uint8)
    if dtype is torch.bool:
        raw &= 1
    return raw.view(dtype).reshape(shape)


def test_result_is_int64_b_by_2():
    d = hash_tensor(torch.randn(5, 3))
    assert d.shape == (5, 2) and d.dtype == torch.int64 and d.device.type == "cpu"


def test_empty_batch_gives_0_by_2():
    assert hash_tensor(torch.empty(0, 7)).shape == (0, 2)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_hashes_and_depends_on_content(dtype):
    x = _rand((4, 33), dtype)
    d = hash_tensor(x)
    assert len({tuple(r) for r in d.tolist()}) == 4
    assert torch.equal(d, hash_tensor(x.clone()))


def test_same_bytes_different_dtype_differ():
    x = torch.arange(12, dtype=torch.int32).reshape(1, 12)
    assert not torch.equal(hash_tensor(x), hash_tensor(x.view(torch.float32)))
    assert not torch.equal(hash_tensor(x.view(torch.uint8)), hash_tensor(x.view(torch.int8)))


def test_same_bytes_different_shape_differ():
    x = torch.arange(12, dtype=torch.float32)
    digests = {tuple(hash_tensor(x.reshape(1, *s))[0].tolist())
               for s in [(12,), (3, 4), (4, 3), (2, 6), (1, 12), (12, 1), (2, 2, 3)]}
    assert len(digests) == 7


def test_independent_of_batch_size_and_position():
    x = torch.randn(10, 3, 5)
    full = hash_tensor(x)
    for i in range(10):
        assert torch.equal(hash_tensor(x[i:i + 1])[0], full[i])
    assert torch.equal(hash_tensor(x.flip(0)), full.flip(0))


@pytest.mark.parametrize("view", ["transpose", "slice", "expand", "channels_last", "step"])
def test_non_contiguous_view_hashes_as_its_contents(simd, view):
    base = torch.randn(6, 8, 5, 7)
    x = {
        "transpose": base.transpose(2, 3),
        "slice": base[:, 1:7, ::2, 3:],
        "expand": base[:, :1].expand(6, 4, 5, 7),
        "channels_last": base.to(memory_format=torch.channels_last),
        "step": base[::2],
    }[view]
    assert not x.is_contiguous() or view == "step"
    assert torch.equal(hash_tensor(x), hash_tensor(x.contiguous()))


def test_large_items_cross_block_boundaries(simd):
    x = torch.randn(2, 100_000)  # 400,000 bytes: 25 blocks, a partial last one
    assert torch.equal(hash_tensor(x), hash_tensor(x.clone()))
    y = x.clone()
    y[0, 70_000] += 1.0
    assert not torch.equal(hash_tensor(y)[0], hash_tensor(x)[0])
    assert torch.equal(hash_tensor(y)[1], hash_tensor(x)[1])


def test_swapping_blocks_changes_digest():
    x = torch.randint(0, 256, (1, 4 * 16384), dtype=torch.uint8)
    swapped = torch.cat([x[:, 16384:32768], x[:, :16384], x[:, 32768:]], dim=1)
    assert not torch.equal(hash_tensor(x), hash_tensor(swapped))


def test_truncating_changes_digest():
    x = torch.zeros(1, 40000, dtype=torch.uint8)
    seen = {tuple(hash_tensor(x[:, :n])[0].tolist()) for n in (40000, 39999, 32768, 16384, 1, 0)}
    assert len(seen) == 6


def test_conjugate_and_negative_views_hash_their_values():
    z = torch.randn(3, 4, dtype=torch.complex64)
    assert torch.equal(hash_tensor(z.conj()), hash_tensor(z.conj().resolve_conj()))
    assert not torch.equal(hash_tensor(z.conj()), hash_tensor(z))


def test_negative_bit_views_hash_their_values():
    # .conj().imag is a float view with the negation bit set: the exporter hands over
    # the stored (unnegated) bytes, so hash_tensor must resolve it first.
    z = torch.randn(3, 4, dtype=torch.complex64)
    neg = z.conj().imag
    assert neg.is_neg() and not neg.is_complex()
    assert torch.equal(hash_tensor(neg), hash_tensor(neg.resolve_neg()))
    assert not torch.equal(hash_tensor(neg), hash_tensor(z.imag))


def test_requires_grad_input_is_hashed_by_value():
    x = torch.randn(3, 4, requires_grad=True)
    assert torch.equal(hash_tensor(x), hash_tensor(x.detach()))


def test_subsample_is_deterministic_and_partial():
    x = torch.randn(4, 10_000)
    a = hash_tensor(x, subsample_count=100)
    assert torch.equal(a, hash_tensor(x.clone(), subsample_count=100))
    assert not torch.equal(a, hash_tensor(x))
    y = x.clone()
    y[:, 1] += 1  # element 1 is not sampled (indices are multiples of 100)
    assert torch.equal(hash_tensor(y, subsample_count=100), a)
    y[:, 100] += 1
    assert not torch.equal(hash_tensor(y, subsample_count=100)[0], a[0])


def test_subsample_at_least_numel_is_full_content():
    x = torch.randn(3, 50)
    assert torch.equal(hash_tensor(x, subsample_count=50), hash_tensor(x))
    assert torch.equal(hash_tensor(x, subsample_count=10**9), hash_tensor(x))


def test_subsample_of_strided_view_matches_contiguous():
    x = torch.randn(4, 30, 40).transpose(1, 2)
    assert torch.equal(hash_tensor(x, subsample_count=77),
                       hash_tensor(x.contiguous(), subsample_count=77))


def test_zero_d_tensor_is_refused():
    with pytest.raises(ValueError, match="batch dimension"):
        hash_tensor(torch.tensor(1.0))


@pytest.mark.parametrize("bad", [[1, 2, 3], 3.0, None, "x"])
def test_non_tensor_is_refused(bad):
    with pytest.raises(TypeError, match="torch.Tensor"):
        hash_tensor(bad)


@pytest.mark.parametrize("count,exc", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_subsample_count_is_refused(count, exc):
    with pytest.raises(exc, match="subsample_count"):
        hash_tensor(torch.randn(2, 3), subsample_count=count)


def test_c_entry_point_validates_out():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        torchcache_c._C.hash_into(x, torch.empty(3, 2, dtype=torch.int32))
    with pytest.raises(TypeError, match="__dlpack__"):
        torchcache_c._C.hash_into(object(), torch.empty(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="sample_count"):
        torchcache_c._C.hash_into(x, torch.empty(3, 2, dtype=torch.int64), -3)


def test_devices_other_than_cpu_and_cuda_are_refused():
    with pytest.raises(ValueError, match="supports CPU and CUDA tensors, not meta"):
        hash_tensor(torch.empty(2, 3, device="meta"))


def test_c_entry_point_allocates_the_digests_when_out_is_none():
    # hash_tensor's CPU path: the digests come back in a new buffer, as a capsule.
    x = torch.randn(5, 7)
    out = torch.empty(5, 2, dtype=torch.int64)
    torchcache_c._C.hash_into(x, out)
    got = torch.from_dlpack(torchcache_c._C.hash_into(x, None))
    assert got.shape == (5, 2) and got.dtype == torch.int64 and got.is_contiguous()
    assert torch.equal(got, out)
    # Each result owns its buffer (a pool of freed buffers serves later calls): a
    # live result is never handed out again.
    held = [hash_tensor(torch.full((5, 7), float(i))) for i in range(40)]
    again = [hash_tensor(torch.full((5, 7), float(i))) for i in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(held, again, strict=True))
    assert len({bytes(h.numpy()) for h in held}) == 40
    with pytest.raises(ValueError, match="out=None needs a CPU x with at least one item"):
        torchcache_c._C.hash_into(torch.empty(0, 3), None)
    with pytest.raises(ValueError, match="batch dimension"):
        torchcache_c._C.hash_into(torch.tensor(1.0), None)


def test_build_info_describes_the_build():
    info = torchcache_c.build_info()
    assert info["version"] == torchcache_c.__version__
    assert info["simd"] in ("portable", "avx2", "avx512")
    assert isinstance(info["cuda_kernels"], bool) and isinstance(info["zstd"], bool)
    assert info["hash"] == "tch128-v2"


@pytest.mark.parametrize("shape", [(1, 3_000_001), (7, 1_000_003), (300, 20_000)])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_threaded_batch_matches_one_thread(shape, threads):
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    one = torch.empty(shape[0], 2, dtype=torch.int64)
    many = torch.empty(shape[0], 2, dtype=torch.int64)
    torchcache_c._C.hash_into(x, one, 0, 0, 1)
    torchcache_c._C.hash_into(x, many, 0, 0, threads)
    assert torch.equal(one, many)
    torchcache_c._C.hash_into(x[:, ::2], one, 0, 0, 1)
    torchcache_c._C.hash_into(x[:, ::2], many, 0, 0, threads)
    assert torch.equal(one, many)
    torchcache_c._C.hash_into(x, many, 1000, 0, threads)
    assert torch.equal(many, hash_tensor(x, subsample_count=1000))


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")
def test_sparse_and_quantized_tensors_are_refused_with_a_way_out():
    with pytest.raises(TypeError, match="to_dense"):
        hash_tensor(torch.eye(3).to_sparse())
    q = torch.quantize_per_tensor(torch.rand(2, 3), 0.1, 0, torch.quint8)
    with pytest.raises(TypeError, match="int_repr"):
        hash_tensor(q)
