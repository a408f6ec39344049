"""Behaviour of torchcache_c._C.Store (docs/format.md): round trips, persistence,
sharing between processes, crash safety, corruption, limits, I/O errors, fork."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchcache_c import _C
from torchcache_c._C import Store

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import check_served, fork_writer, items_for, keys_for  # noqa: E402

HELPER = str(Path(__file__).parent / "store_helpers.py")
HAVE_ZSTD = _C.build_info()["zstd"]
RECORD_HEADER = 128

DTYPES = [
    torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
    torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.complex64, torch.complex128,
]
DTYPES += [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                       "float8_e5m2fnuz", "float8_e8m0fnu") if hasattr(torch, n)]


def random_items(n: int, item_shape, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """n items of random bytes (any bit pattern, NaNs included) of this dtype."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n, *item_shape), generator=g).bool()
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for d in item_shape:
        numel *= d
    raw = torch.randint(0, 256, (n * numel * itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(n, *item_shape).contiguous()


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads included)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def present(store: Store, keys: torch.Tensor) -> list:
    return list(store.lookup(keys))


def segments(path) -> list:
    return sorted(Path(path).glob("seg-*.tcs"))


@pytest.fixture(params=["arena", "dir"])
def where(request, tmp_path):
    return None if request.param == "arena" else str(tmp_path / "cache")


compress_params = [None, pytest.param(3, marks=pytest.mark.skipif(
    not HAVE_ZSTD, reason="libzstd is not installed"))]


# ---- round trips -----------------------------------------------------------

@pytest.mark.parametrize("zstd_level", compress_params)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exact(where, dtype, zstd_level):
    store = Store(where, zstd_level=zstd_level)
    keys = keys_for(range(6))
    src = random_items(6, (3, 16), dtype)
    src[:3] = src[0]  # some compressible content too
    assert store.put(keys, src) == 6
    assert present(store, keys) == [1] * 6
    for i in range(6):
        word, shape = store.entry_info(keys, i)
        assert shape == (3, 16)
    dest = torch.empty_like(src)
    store.gather(keys, dest)
    assert same_bytes(dest, src)


@pytest.mark.parametrize("zstd_level", compress_params)
@pytest.mark.parametrize("item_shape", [(), (0,), (1,), (7,), (2, 3, 5), (1,) * 8,
                                        (1024, 1024)], ids=str)
def test_item_shapes_from_scalar_to_megabytes_round_trip(where, item_shape, zstd_level):
    store = Store(where, zstd_level=zstd_level)
    n = 2 if item_shape == (1024, 1024) else 5
    keys = keys_for(range(n))
    src = random_items(n, item_shape, torch.float32, seed=len(item_shape))
    assert store.put(keys, src) == n
    dest = torch.full_like(src, 7.0)
    store.gather(keys, dest)
    assert same_bytes(dest, src)
    assert store.entry_info(keys, 0)[1] == item_shape


def test_dtype_word_is_the_dlpack_word():
    store = Store(None)
    keys = keys_for(range(1))
    store.put(keys, torch.zeros(1, 2, dtype=torch.bfloat16))
    assert store.entry_info(keys, 0) == (4 | 16 << 8 | 1 << 16, (2,))
    store.put(keys_for([5]), torch.zeros(1, dtype=torch.float32))
    assert store.entry_info(keys_for([5]), -1) == (2 | 32 << 8 | 1 << 16, ())


def test_more_than_eight_item_dimensions_are_refused():
    store = Store(None)
    with pytest.raises(ValueError, match="at most 8"):
        store.put(keys_for(range(1)), torch.zeros((1,) + (1,) * 9))


@pytest.mark.skipif(not HAVE_ZSTD, reason="libzstd is not installed")
def test_compression_is_used_only_when_smaller(tmp_path):
    zeros = Store(str(tmp_path / "z"), zstd_level=3)
    zeros.put(keys_for(range(4)), torch.zeros(4, 65536))
    assert zeros.stats()["bytes_written"] < 4 * 65536
    noise = Store(str(tmp_path / "n"), zstd_level=3)
    src = random_items(4, (65536,), torch.uint8)
    noise.put(keys_for(range(4)), src)
    assert noise.stats()["bytes_written"] == 4 * (RECORD_HEADER + 65536)
    dest = torch.empty_like(src)
    noise.gather(keys_for(range(4)), dest)
    assert torch.equal(dest, src)


# ---- put semantics ----------------------------------------------------------

def test_put_skips_keys_already_present_and_first_value_wins(where):
    store = Store(where)
    keys = keys_for(range(4))
    assert store.put(keys[:2], torch.ones(2, 3)) == 2
    assert store.put(keys, torch.full((4, 3), 2.0)) == 2
    dest = torch.empty(4, 3)
    store.gather(keys, dest)
    assert dest[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]


def test_duplicate_keys_in_one_batch_are_stored_once(where):
    store = Store(where)
    keys = keys_for([1, 1, 2])
    assert store.put(keys, torch.arange(3.0).reshape(3, 1)) == 2
    dest = torch.empty(3, 1)
    store.gather(keys, dest)
    assert dest.flatten().tolist() == [0.0, 0.0, 2.0]


def test_lookup_reports_absent_keys_as_zero(where):
    store = Store(where)
    store.put(keys_for([1, 3]), torch.zeros(2, 1))
    assert present(store, keys_for(range(5))) == [0, 1, 0, 1, 0]
    assert store.lookup(keys_for([])) == b""


def test_max_bytes_stops_storing_but_keeps_serving(where):
    record = RECORD_HEADER + 256  # a (64,) float32 item
    store = Store(where, max_bytes=3 * record + 10)
    keys = keys_for(range(10))
    src = items_for(keys, 32)
    assert store.put(keys, src) == 3
    assert store.is_full
    assert store.stats()["bytes_written"] == 3 * record
    assert store.put(keys_for([100]), items_for(keys_for([100]), 1)) == 0
    assert check_served(store, keys, 32) == 3


# ---- persistence and sharing -------------------------------------------------

def test_records_persist_across_store_instances(tmp_path):
    keys = keys_for(range(50))
    with Store(str(tmp_path)) as a:
        a.put(keys, items_for(keys, 100))
    b = Store(str(tmp_path))
    assert b.stats()["records"] == 50
    assert check_served(b, keys, 100) == 50


def test_a_put_of_stored_keys_creates_no_segment(tmp_path):
    """The writer's segment is made at its first record: a process whose every
    put hits (a second epoch, another rank) leaves no empty file behind."""
    keys = keys_for(range(8))
    with Store(str(tmp_path)) as a:
        a.put(keys, items_for(keys, 4))
    (first,) = os.listdir(tmp_path)
    with Store(str(tmp_path)) as b:
        assert b.put(keys, items_for(keys, 4)) == 0
        assert b.put(keys[:0], items_for(keys[:0], 4)) == 0
        assert os.listdir(tmp_path) == [first]
        assert b.stats()["open_fds"] <= 1
        more = keys_for(range(8, 10))
        assert b.put(torch.cat([keys[:3], more]), items_for(torch.cat([keys[:3], more]), 4)) == 2
        assert len(os.listdir(tmp_path)) == 2
    c = Store(str(tmp_path))
    assert check_served(c, torch.cat([keys, more]), 4) == 10


def test_directory_is_created_with_parents(tmp_path):
    path = tmp_path / "a" / "b" / "c"
    store = Store(str(path))
    assert store.path == str(path) and path.is_dir()
    assert Store(None).path is None


def test_records_persist_across_processes(tmp_path):
    subprocess.run([sys.executable, HELPER, str(tmp_path), "0", "40", "8", "64"], check=True,
                   stdout=subprocess.DEVNULL)
    store = Store(str(tmp_path))
    assert check_served(store, keys_for(range(40)), 64) == 40


def test_lookup_miss_picks_up_other_writers_records(tmp_path):
    reader = Store(str(tmp_path), refresh_ms=0)
    writer = Store(str(tmp_path))
    keys = keys_for(range(5))
    assert present(reader, keys) == [0] * 5
    writer.put(keys, items_for(keys, 8))
    assert present(reader, keys) == [1] * 5
    more = keys_for(range(5, 9))
    writer.put(more, items_for(more, 8))
    assert reader.refresh() == 4
    assert reader.refresh() == 0


def test_refresh_on_miss_is_rate_limited(tmp_path):
    reader = Store(str(tmp_path), refresh_ms=60_000)
    Store(str(tmp_path)).put(keys_for([1]), torch.zeros(1, 1))
    assert present(reader, keys_for([1])) == [0]  # within refresh_ms of the open
    assert reader.refresh() == 1
    assert present(reader, keys_for([1])) == [1]


def test_four_processes_writing_overlapping_keys_lose_nothing(tmp_path):
    pids = [fork_writer(str(tmp_path), p * 100, 300, 16, 300) for p in range(4)]
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    # Writers 0 and 3 each hold 100 keys no other writer has, so each made a segment.
    # Writers 1 and 2 may find every key of theirs stored already (refresh_ms=0) if
    # they run late; a put that stores nothing makes no file.  CI on a loaded 2-core
    # machine once saw three segments.
    assert 2 <= len(segments(tmp_path)) <= 4
    store = Store(str(tmp_path))
    assert check_served(store, keys_for(range(600)), 300) == 600
    assert store.stats()["records"] == 600
    assert store.stats()["corrupt"] == 0


def test_killed_writers_never_leave_servable_torn_records(tmp_path):
    rng = random.Random(1)
    for w in range(20):
        # each writer its own ids (a segment is made by the first put that
        # stores); killed at a random moment once it has started writing
        pid = fork_writer(str(tmp_path), w * 64, 64, 16, 16384, loop=True)
        deadline = time.monotonic() + 60
        while len(segments(tmp_path)) <= w and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert len(segments(tmp_path)) == 20
    # Kill points are random: whatever each writer left, every record served is
    # exact (check_served asserts it).  How many survive depends on timing, so it
    # is not asserted here; tests/test_killed_writers.py pins a known batch.
    store = Store(str(tmp_path))
    for salt in range(100):
        check_served(store, keys_for(range(20 * 64), salt), 16384)


def test_gather_of_rows_in_any_order_reads_each_row_exactly(tmp_path):
    """A gather reads runs of records that lie end to end in one call; rows asked
    in any order, twice, or absent, each get their own bytes."""
    keys = keys_for(range(300))
    with Store(str(tmp_path)) as w:
        w.put(keys, items_for(keys, 40))
    store = Store(str(tmp_path))
    order = list(range(300)) + [5, 5, 299]
    random.Random(3).shuffle(order)
    ask = torch.cat([keys[order], keys_for([10_000])]).contiguous()
    dest = torch.full((len(ask), 40), -1, dtype=torch.int64)
    served = store.gather(ask, dest)
    assert served == b"\x01" * len(order) + b"\x00"
    assert torch.equal(dest[:-1], items_for(keys[order], 40))


def test_payloads_in_the_scan_window_are_verified_at_open(tmp_path):
    """Records of 512 bytes or more are verified while the open scans them, so a
    damaged one is counted before any use; tiny ones at their first use."""
    for numel, counted_at_open in ((64, 1), (8, 0)):  # 512 and 64 payload bytes
        d = tmp_path / str(numel)
        keys = keys_for(range(6))
        with Store(str(d)) as w:
            w.put(keys, items_for(keys, numel))
        (seg,) = d.glob("seg-*.tcs")
        rec = RECORD_HEADER + -(-numel * 8 // 64) * 64
        data = bytearray(seg.read_bytes())
        data[2 * rec + RECORD_HEADER + 3] ^= 0x10
        seg.write_bytes(bytes(data))
        store = Store(str(d))
        assert store.stats()["corrupt"] == counted_at_open
        assert present(store, keys) == [1, 1, 0, 1, 1, 1]
        assert check_served(store, keys, numel) == 5
        assert store.stats()["corrupt"] == 1


# ---- corruption ----------------------------------------------------------------

def write_records(path, n=40, numel=48):
    """n records of exactly 128 + 384 bytes (no padding): every byte checksummed."""
    keys = keys_for(range(n))
    with Store(str(path)) as s:
        s.put(keys, items_for(keys, numel))
    return keys, numel, RECORD_HEADER + numel * 8


def test_bit_flips_are_skipped_counted_and_never_served(tmp_path):
    src = tmp_path / "src"
    keys, numel, rec = write_records(src)
    (seg,) = segments(src)
    data = seg.read_bytes()
    rng = random.Random(7)
    for trial in range(60):
        work = tmp_path / f"t{trial}"
        shutil.copytree(src, work)
        (wseg,) = segments(work)
        pos = rng.randrange(len(data))
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        wseg.write_bytes(bytes(flipped))
        store = Store(str(work))
        hits = present(store, keys)
        assert hits[pos // rec] == 0
        assert sum(hits) == len(keys) - 1
        assert check_served(store, keys, numel) == len(keys) - 1
        assert store.stats()["corrupt"] == 1
        store.close()
        shutil.rmtree(work)


def test_truncated_segments_serve_only_whole_records(tmp_path):
    src = tmp_path / "src"
    keys, numel, rec = write_records(src)
    (seg,) = segments(src)
    data = seg.read_bytes()
    rng = random.Random(3)
    for _trial in range(30):
        cut = rng.randrange(len(data))
        seg.write_bytes(data[:cut])
        store = Store(str(src))
        assert check_served(store, keys, numel) == cut // rec
        store.close()


def test_garbage_between_records_is_skipped_and_later_records_served(tmp_path):
    keys, numel, rec = write_records(tmp_path, n=10)
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[3 * rec:3 * rec + 64] = b"\xab" * 64  # a header overwritten
    seg.write_bytes(bytes(data))
    store = Store(str(tmp_path))
    assert present(store, keys) == [1, 1, 1, 0, 1, 1, 1, 1, 1, 1]
    assert store.stats()["corrupt"] == 1
    assert check_served(store, keys, numel) == 9


def test_symlinked_segments_are_not_followed(tmp_path):
    keys, numel, _ = write_records(tmp_path / "real", n=3)
    (seg,) = segments(tmp_path / "real")
    (tmp_path / "linked").mkdir()
    os.symlink(seg, tmp_path / "linked" / seg.name)
    store = Store(str(tmp_path / "linked"))
    assert present(store, keys) == [0, 0, 0]


# ---- errors ----------------------------------------------------------------------

def test_io_error_stops_storing_and_keeps_serving(tmp_path):
    # RLIMIT_FSIZE stops writes even for root, where a read-only directory would not.
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from store_helpers import keys_for, items_for, check_served
from torchcache_c._C import Store
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
s = Store({str(tmp_path)!r})
keys = keys_for(range(100))
stored = s.put(keys, items_for(keys, 1000))
assert 0 < stored < 100, stored
assert "too large" in s.io_error, s.io_error
assert s.put(keys_for(range(200, 210)), items_for(keys_for(range(200, 210)), 1)) == 0
assert check_served(s, keys, 1000) == stored
print(stored)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert check_served(Store(str(tmp_path)), keys_for(range(100)), 1000) == int(out)


def test_unwritable_directory_sets_io_error_and_put_returns_zero(tmp_path):
    store = Store(str(tmp_path / "gone"))
    os.rmdir(tmp_path / "gone")  # the segment cannot be created, even as root
    assert store.put(keys_for([1]), torch.zeros(1, 4)) == 0
    assert "cannot create segment" in store.io_error
    assert store.stats()["io_error"] == store.io_error
    assert present(store, keys_for([1])) == [0]


def test_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="not a directory"):
        Store(str(tmp_path / "f"))


@pytest.mark.parametrize("where", ["mem", "dir"])
def test_gather_leaves_absent_or_differing_rows_unserved(where, tmp_path):
    store = Store(None if where == "mem" else str(tmp_path))
    keys = keys_for(range(3))
    store.put(keys[:2], torch.zeros(2, 4))
    store.put(keys[2:], torch.zeros(1, 5))
    assert store.gather(keys, torch.empty(3, 4)) == b"\x01\x01\x00"
    assert store.gather(keys[:2], torch.empty(2, 4, dtype=torch.float64)) == b"\x00\x00"
    assert store.gather(keys_for([0, 9]), torch.empty(2, 4)) == b"\x01\x00"
    assert set(store.take_faults()) == {"mismatch"}
    assert store.stats()["faults"]["mismatch"] == 3
    with pytest.raises(KeyError):
        store.entry_info(keys_for([9]), 0)
    with pytest.raises(IndexError):
        store.entry_info(keys, 3)


@pytest.mark.parametrize("bad", [torch.zeros(3, 2, dtype=torch.int32), torch.zeros(3, 3,
                                 dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64).t(),
                                 torch.zeros(6, dtype=torch.int64)], ids=str)
def test_bad_keys_are_refused_with_what_to_pass(bad):
    with pytest.raises(ValueError, match=r"keys must be a contiguous CPU int64 tensor of shape"):
        Store(None).lookup(bad)


def test_bad_arguments_raise_type_or_value_errors():
    store = Store(None)
    with pytest.raises(TypeError, match="keys must be a tensor"):
        store.lookup([[1, 2]])
    with pytest.raises(ValueError, match="src must have shape"):
        store.put(keys_for(range(2)), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="contiguous"):
        store.put(keys_for(range(2)), torch.zeros(4, 2)[:, :1])
    with pytest.raises(ValueError, match="max_bytes"):
        Store(None, max_bytes=-1)
    with pytest.raises(TypeError, match="zstd_level"):
        Store(None, zstd_level="3")
    with pytest.raises(TypeError):
        Store(None, 5)


def test_close_is_idempotent_and_later_calls_raise():
    store = Store(None)
    store.close()
    store.close()
    for call in (lambda: store.lookup(keys_for([1])), store.stats, store.refresh,
                 lambda: store.put(keys_for([1]), torch.zeros(1)),
                 lambda: store.gather(keys_for([1]), torch.zeros(1))):
        with pytest.raises(ValueError, match="store is closed"):
            call()


# ---- fork ----------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_writes_its_own_new_segment(tmp_path):
    store = Store(str(tmp_path), refresh_ms=0)
    parent_keys = keys_for(range(10))
    store.put(parent_keys, items_for(parent_keys, 16))
    (parent_seg,) = segments(tmp_path)
    parent_size = parent_seg.stat().st_size
    child_keys = keys_for(range(10, 20))
    pid = os.fork()
    if pid == 0:
        ok = 0
        try:
            ok = (store.put(child_keys, items_for(child_keys, 16)) == 10
                  and check_served(store, parent_keys, 16) == 10
                  and check_served(store, child_keys, 16) == 10)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent_seg.stat().st_size == parent_size
    segs = segments(tmp_path)
    assert len(segs) == 2
    assert any(f"-{pid}-" in s.name for s in segs)
    assert store.refresh() == 10
    assert check_served(store, child_keys, 16) == 10


# ---- threads -------------------------------------------------------------------

def test_threads_can_put_lookup_and_gather_at_once(where):
    import threading

    store = Store(where, refresh_ms=0)
    errors = []

    def work(t):
        try:
            for b in range(20):
                keys = keys_for(range(b * 10, b * 10 + 10), salt=t % 2)
                store.put(keys, items_for(keys, 512))
                assert check_served(store, keys, 512) == 10
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.stats()["records"] == 400
