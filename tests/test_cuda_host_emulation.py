"""The CUDA engine's arithmetic and plan, run on the CPU, against the C reference.

tests/cuda_host/check_common.cu is built with nvcc (host code only, no GPU needed)
and runs every thread of every launch that cuda.c would make, through the same
functions of csrc/hash_cuda_common.h that the kernels call.  Its digests must be
bit-identical to torchcache_c.hash_tensor on the CPU.  Skipped without nvcc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import torchcache_c

ROOT = Path(__file__).resolve().parent.parent
MASK64 = (1 << 64) - 1


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


pytestmark = pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")

# DLPack (code, bits) of each dtype: the dtype word is code | bits << 8 | lanes << 16.
DLPACK = {
    torch.bool: (6, 8),
    torch.uint8: (1, 8),
    torch.int8: (0, 8),
    torch.int16: (0, 16),
    torch.int32: (0, 32),
    torch.int64: (0, 64),
    torch.float16: (2, 16),
    torch.bfloat16: (4, 16),
    torch.float32: (2, 32),
    torch.float64: (2, 64),
    torch.complex64: (5, 64),
    torch.complex128: (5, 128),
}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    exe = tmp_path_factory.mktemp("cuda_host") / "check_common"
    subprocess.run(
        [_nvcc(), "-O2", "-I", str(ROOT / "csrc"), "-o", str(exe),
         str(ROOT / "tests" / "cuda_host" / "check_common.cu")],
        check=True,
    )
    return exe


def _emulate(exe, tmp_path, x, sample_count=0, scratch_cap=64 << 20):
    storage = x.untyped_storage()
    raw = torch.empty(storage.nbytes(), dtype=torch.uint8)
    raw.untyped_storage().copy_(storage)
    path = tmp_path / "storage.bin"
    raw.numpy().tofile(path)
    code, bits = DLPACK[x.dtype]
    args = [str(exe), str(path), str(x.storage_offset() * x.element_size()),
            str(x.element_size()), str(code | bits << 8 | 1 << 16), str(sample_count),
            str(scratch_cap), str(x.dim())]
    args += [str(s) for s in x.shape] + [str(s) for s in x.stride()]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return [tuple(int(v) for v in line.split()) for line in out.stdout.splitlines()]


def _reference(x, sample_count=0):
    d = torchcache_c.hash_tensor(x, subsample_count=sample_count or None)
    return [(int(a) & MASK64, int(b) & MASK64) for a, b in d.tolist()]


def _check(exe, tmp_path, x, sample_count=0, scratch_cap=64 << 20):
    got = _emulate(exe, tmp_path, x, sample_count, scratch_cap)
    assert got == _reference(x, sample_count)


def _random(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100, 100, shape, generator=g).to(dtype)


ITEM_BYTES = [1, 7, 8, 9, 255, 256, 257, 4096, 16383, 16384, 16385, 3 * 16384 + 100,
              64 * 16384 + 8]


@pytest.mark.parametrize("item_bytes", ITEM_BYTES)
def test_contiguous_items_of_every_length_match_reference(emulator, tmp_path, item_bytes):
    x = _random((3, item_bytes), torch.uint8, seed=item_bytes)
    _check(emulator, tmp_path, x)


@pytest.mark.parametrize("dtype", list(DLPACK))
def test_every_dtype_matches_reference(emulator, tmp_path, dtype):
    x = _random((5, 3, 37, 11), dtype, seed=1)
    _check(emulator, tmp_path, x)
    _check(emulator, tmp_path, x.transpose(1, 3))


def test_zero_length_items_match_reference(emulator, tmp_path):
    _check(emulator, tmp_path, torch.empty((4, 0), dtype=torch.float32))
    _check(emulator, tmp_path, torch.empty((2, 3, 0, 5), dtype=torch.int16))


def test_scalar_items_match_reference(emulator, tmp_path):
    _check(emulator, tmp_path, _random((300,), torch.float64))
    _check(emulator, tmp_path, _random((300,), torch.float64)[::3])


@pytest.mark.parametrize("start", range(1, 8))
def test_misaligned_item_bases_match_reference(emulator, tmp_path, start):
    # uint8 views that start off an 8-byte boundary; with an odd row length
    # every item has its own misalignment.
    base = _random((6, 40000 + 3), torch.uint8, seed=start)
    _check(emulator, tmp_path, base[:, start:])
    _check(emulator, tmp_path, base[:, start:start + 300])
    halves = _random((4, 20001), torch.int16, seed=start)
    _check(emulator, tmp_path, halves[:, start:])


def test_non_contiguous_views_match_reference(emulator, tmp_path):
    x = _random((4, 3, 64, 48), torch.float32, seed=3)
    views = [
        x.transpose(2, 3),
        x.permute(0, 2, 3, 1),
        x.contiguous(memory_format=torch.channels_last),
        x[:, :, ::2, 1::3],
        x[::2],
        x[:, 1],
        _random((1, 3, 1, 500), torch.float16, seed=4).expand(5, 3, 7, 500),
        _random((7, 1), torch.int64, seed=5).expand(7, 9000),
        x.transpose(0, 1),
    ]
    for v in views:
        _check(emulator, tmp_path, v)


@pytest.mark.parametrize("scratch_cap", [16384, 32768, 5 * 16384])
def test_small_scratch_splits_items_and_batches(emulator, tmp_path, scratch_cap):
    x = _random((5, 3, 100, 70), torch.float32, seed=6)  # 84000 bytes per item
    _check(emulator, tmp_path, x.transpose(2, 3), scratch_cap=scratch_cap)
    y = _random((33, 1000), torch.int16, seed=7)  # 2000 bytes per item
    _check(emulator, tmp_path, y.t().contiguous().t(),
           scratch_cap=scratch_cap)


@pytest.mark.parametrize("count", [1, 2, 7, 100, 4095, 4096, 10**6])
def test_subsample_matches_reference(emulator, tmp_path, count):
    x = _random((3, 16, 256), torch.float32, seed=8)  # 4096 elements per item
    _check(emulator, tmp_path, x, sample_count=count)
    _check(emulator, tmp_path, x.transpose(1, 2), sample_count=count)
    _check(emulator, tmp_path, x.transpose(1, 2), sample_count=count, scratch_cap=16384)


def test_large_subsample_of_a_large_item_matches_reference(emulator, tmp_path):
    x = _random((2, 3, 517, 433), torch.uint8, seed=9)
    _check(emulator, tmp_path, x, sample_count=300_001)
    _check(emulator, tmp_path, x, sample_count=300_001, scratch_cap=16384)


def test_many_small_items_match_reference(emulator, tmp_path):
    x = _random((4096, 5), torch.float32, seed=10)
    _check(emulator, tmp_path, x)
    _check(emulator, tmp_path, x.t().contiguous().t())


def test_a_multi_megabyte_item_matches_reference(emulator, tmp_path):
    x = _random((2, 3, 500, 700), torch.float32, seed=11)  # 4.2 MB per item
    _check(emulator, tmp_path, x)
    _check(emulator, tmp_path, x.transpose(1, 3), scratch_cap=1 << 20)
