"""hash_tensor's contract: shape, invariances, dtypes and errors."""

import os
import subprocess
import sys
import threading

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


def _openmp_loaded():
    """The path of the OpenMP runtime this process has loaded (torch's), or None."""
    names = ("libgomp", "libiomp5", "libomp")
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path).startswith(names):
                return path
    return None


@pytest.fixture(params=["openmp", "pthreads"])
def threads_runtime(request):
    """Hashing's threads: the OpenMP team shared with torch, or threads of its own."""
    torch.ones(1 << 20).sum()  # torch's OpenMP runtime is loaded and has run
    if request.param == "openmp" and _openmp_loaded() is None:
        pytest.skip("this torch build has no OpenMP runtime")
    torchcache_c._C._threads_runtime(allow_openmp=request.param == "openmp")
    try:
        yield request.param
    finally:
        torchcache_c._C._threads_runtime(allow_openmp=True)


@pytest.mark.parametrize("shape", [(1, 3_000_001), (7, 1_000_003), (300, 20_000)])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_threaded_batch_matches_one_thread(shape, threads, threads_runtime):
    assert (torchcache_c._C._threads_runtime() == "pthreads") == (threads_runtime == "pthreads")
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


def test_threads_are_torchs_openmp_team_where_torch_has_one():
    # A torch op has just run: libgomp's workers spin for a while after it, so threads
    # of our own would wait for a core; its team is what the hash runs on instead.
    torch.ones(1 << 20).sum()
    path = _openmp_loaded()
    if path is None:
        pytest.skip("this torch build has no OpenMP runtime")
    assert torchcache_c._C._threads_runtime() == path
    assert torchcache_c._C._threads_runtime(allow_openmp=False) == "pthreads"
    assert torchcache_c._C._threads_runtime(allow_openmp=True) == path


_FORKED = """
import os, signal, torch, torchcache_c
x = torch.randint(0, 256, (3, 2_000_000), dtype=torch.uint8)
one = torch.empty(3, 2, dtype=torch.int64)
torchcache_c._C.hash_into(x, one, 0, 0, 1)
torch.set_num_threads(2)
torch.rand(4_000_000).sum()  # libgomp's team of 2 now exists in this process
many = torch.empty(3, 2, dtype=torch.int64)
torchcache_c._C.hash_into(x, many, 0, 0, 2)
assert torch.equal(one, many)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    # the team's threads were not copied: libgomp would wait for them for ever
    signal.alarm(50)  # (so that a child that hangs does not outlive the test)
    out = torch.empty(3, 2, dtype=torch.int64)
    torchcache_c._C.hash_into(x, out, 0, 0, 2)
    os.write(w, (torchcache_c._C._threads_runtime() + " " +
                 str(torch.equal(out, one))).encode())
    os._exit(0)
os.close(w)
print(os.read(r, 4096).decode(), os.waitpid(pid, 0)[1], torchcache_c._C._threads_runtime())
"""


def test_a_process_forked_after_torchs_threads_ran_hashes_on_threads_of_its_own():
    out = subprocess.run([sys.executable, "-c", _FORKED], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    child_runtime, child_equal, status, parent_runtime = out.stdout.split()
    assert (child_runtime, child_equal, status) == ("pthreads", "True", "0")
    if _openmp_loaded() is not None:
        assert parent_runtime != "pthreads"


_SMALL_TEAM = """
import torch, torchcache_c
torch.ones(1 << 20).sum()
g = torch.Generator().manual_seed(4)
x = torch.randint(0, 256, (5, 1_000_003), dtype=torch.uint8, generator=g)
one, many = torch.empty(5, 2, dtype=torch.int64), torch.empty(5, 2, dtype=torch.int64)
torchcache_c._C.hash_into(x, one, 0, 0, 1)
torchcache_c._C.hash_into(x, many, 0, 0, 4)
print(torchcache_c._C._threads_runtime(), torch.equal(one, many))
"""


def test_a_team_smaller_than_asked_for_still_hashes_every_block():
    # OMP_THREAD_LIMIT=1: the runtime gives a team of one where four were asked for;
    # the three workers that never run leave their blocks to the one that does.
    if _openmp_loaded() is None:
        pytest.skip("this torch build has no OpenMP runtime")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run([sys.executable, "-c", _SMALL_TEAM], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    runtime, equal = out.stdout.split()
    assert runtime != "pthreads" and equal == "True"


def test_python_threads_hashing_at_once_each_get_their_digests(threads_runtime):
    # Each Python thread's call starts a team of its own (the GIL is released).
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randint(0, 256, (4, 1_300_000), dtype=torch.uint8, generator=gen)
          for _ in range(4)]
    want = [hash_tensor(x) for x in xs]  # (threads as torch has them)
    for x, w in zip(xs, want, strict=True):
        one = torch.empty(4, 2, dtype=torch.int64)
        torchcache_c._C.hash_into(x, one, 0, 0, 1)
        assert torch.equal(one, w)
    wrong = []

    def hash_often(i):
        out = torch.empty(4, 2, dtype=torch.int64)
        for _ in range(10):
            torchcache_c._C.hash_into(xs[i], out, 0, 0, 2)
            if not torch.equal(out, want[i]):
                wrong.append(i)

    workers = [threading.Thread(target=hash_often, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert wrong == []


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation.*:UserWarning")
def test_sparse_and_quantized_tensors_are_refused_with_a_way_out():
    with pytest.raises(TypeError, match="to_dense"):
        hash_tensor(torch.eye(3).to_sparse())
    q = torch.quantize_per_tensor(torch.rand(2, 3), 0.1, 0, torch.quint8)
    with pytest.raises(TypeError, match="int_repr"):
        hash_tensor(q)
