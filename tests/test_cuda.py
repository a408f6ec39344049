"""The CUDA engine on a real GPU: digests bit-identical to the CPU reference.

The GPU tests are skipped when torch sees no GPU; the build check runs everywhere (it
reads build_info only).  The tests call _C.hash_into directly, so a
silent fall back to the host copy (NotImplementedError) fails them instead of
hiding a kernel problem.
"""

from __future__ import annotations

import os
import shutil
import threading

import pytest
import torch

import torchcache_c
from torchcache_c import _C

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
    torch.complex128,
]


def _gpu(x: torch.Tensor, count: int = 0) -> torch.Tensor:
    out = torch.empty((x.shape[0], 2), dtype=torch.int64)
    _C.hash_into(x, out, count, torch.cuda.current_stream(x.device).cuda_stream)
    return out


def _cpu(x: torch.Tensor, count: int = 0) -> torch.Tensor:
    return torchcache_c.hash_tensor(x.cpu(), subsample_count=count or None)


def _same(x: torch.Tensor, count: int = 0) -> None:
    assert torch.equal(_gpu(x, count), _cpu(x, count))


def _random(shape, dtype, device="cuda", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g, device=device).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=g, device=device).to(dtype)
    return torch.randint(-100, 100, shape, generator=g, device=device).to(dtype)


def test_build_embeds_kernels_when_nvcc_was_found():
    if shutil.which("nvcc") is None or os.environ.get("TORCHCACHE_C_NO_CUDA") == "1":
        pytest.skip("built without nvcc")
    assert _C.build_info()["cuda_kernels"] is True


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_matches_cpu(dtype):
    x = _random((6, 3, 45, 37), dtype)
    _same(x)
    _same(x.transpose(1, 3))
    _same(x, count=100)


@pytest.mark.parametrize("item_bytes", [1, 7, 8, 9, 255, 256, 257, 16383, 16384, 16385,
                                        3 * 16384 + 100, 1 << 20, (1 << 20) + 3])
@needs_gpu
def test_item_lengths_match_cpu(item_bytes):
    _same(_random((5, item_bytes), torch.uint8, seed=item_bytes))


@needs_gpu
def test_a_300_megabyte_item_matches_cpu():
    x = _random((1, 300 * (1 << 20) + 5), torch.uint8, seed=1)
    _same(x)
    _same(x[:, 3:])


@needs_gpu
def test_a_non_contiguous_item_larger_than_scratch_matches_cpu():
    x = _random((2, 4096, 9000), torch.float32, seed=2)  # 147 MB per item
    _same(x.transpose(1, 2))


@needs_gpu
@pytest.mark.parametrize("batch", [1, 2, 31, 257, 4096])
def test_batch_sizes_match_cpu(batch):
    _same(_random((batch, 3, 17, 19), torch.float32, seed=batch))


@needs_gpu
def test_zero_length_items_match_cpu():
    _same(torch.empty((4, 0), device="cuda"))
    _same(torch.empty((3, 2, 0, 5), dtype=torch.int16, device="cuda"))


@needs_gpu
@pytest.mark.parametrize("start", range(1, 8))
def test_misaligned_views_match_cpu(start):
    base = _random((6, 40003), torch.uint8, seed=start)
    _same(base[:, start:])
    _same(base[:, start:start + 300])


@needs_gpu
def test_non_contiguous_views_match_cpu():
    x = _random((8, 3, 64, 48), torch.float32, seed=3)
    for v in [
        x.transpose(2, 3),
        x.permute(0, 2, 3, 1),
        x.contiguous(memory_format=torch.channels_last),
        x[:, :, ::2, 1::3],
        x[::2],
        x[:, 1],
        x.transpose(0, 1),
        _random((1, 3, 1, 500), torch.float16, seed=4).expand(5, 3, 7, 500),
    ]:
        _same(v)


@needs_gpu
@pytest.mark.parametrize("count", [1, 7, 1000, 4096, 10**6])
def test_subsample_matches_cpu(count):
    x = _random((4, 16, 256), torch.float32, seed=5)
    _same(x, count)
    _same(x.transpose(1, 2), count)


@needs_gpu
def test_digest_is_independent_of_layout_and_device():
    x = _random((4, 3, 32, 32), torch.float32, seed=6)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(_gpu(x), _gpu(cl))
    assert torch.equal(torchcache_c.hash_tensor(x), torchcache_c.hash_tensor(x.cpu()))


@needs_gpu
def test_side_streams_are_ordered_after_the_producer():
    streams = [torch.cuda.Stream() for _ in range(3)]
    for i, s in enumerate(streams):
        with torch.cuda.stream(s):
            x = torch.full((64, 1 << 16), float(i), device="cuda")
            x.add_(1)  # queued on s; hashing on s must see it
            got = _gpu(x)
            want = _cpu(x)
        assert torch.equal(got, want)


@needs_gpu
def test_concurrent_threads_match_cpu():
    xs = [_random((16, 50000), torch.float32, seed=10 + i) for i in range(8)]
    want = [_cpu(x) for x in xs]
    got = [None] * len(xs)

    def work(i):
        with torch.cuda.stream(torch.cuda.Stream()):
            got[i] = _gpu(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_non_default_device_matches_cpu():
    x = _random((8, 3, 40, 40), torch.float32, device="cuda:1", seed=7)
    with torch.cuda.device(0):
        _same(x)  # current device 0, tensor on device 1
    _same(x.transpose(2, 3))


@needs_gpu
def test_hash_tensor_uses_the_gpu_without_falling_back(caplog):
    x = _random((3, 1000), torch.float32, seed=8)
    with caplog.at_level("WARNING", logger="torchcache_c"):
        assert torch.equal(torchcache_c.hash_tensor(x), _cpu(x))
    if _C.build_info()["cuda_kernels"]:
        assert "on the host" not in caplog.text
