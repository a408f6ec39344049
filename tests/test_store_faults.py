"""Faults are misses (issue 12): whatever happens to the files under a store,
its calls return, the affected rows read as misses, and the fault is counted
per kind in stats()["faults"] and reported once by take_faults().  Hostile
entries named like segments (FIFOs, sockets, directories, huge sparse files)
cannot stall a reader."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchcache_c._C import Store

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import check_served, dir_descriptors, items_for, keys_for  # noqa: E402

HERE = str(Path(__file__).parent)
RECORD_HEADER = 128


def segments(path) -> list:
    return sorted(Path(path).glob("seg-*.tcs"))


def write_records(path, ids, numel=48) -> torch.Tensor:
    keys = keys_for(ids)
    with Store(str(path)) as s:
        s.put(keys, items_for(keys, numel))
    return keys


def run_python(code: str, timeout: float = 120) -> str:
    """Runs code in a fresh interpreter (for limits and signals that must not
    touch the test process); returns its stdout."""
    prelude = f"import sys; sys.path.insert(0, {HERE!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + code], check=True,
                          capture_output=True, text=True, timeout=timeout).stdout


# ---- truncated, removed, unreadable ------------------------------------------------

def test_segment_truncated_under_a_reader_costs_rows_not_the_process(tmp_path):
    # Was SIGBUS at the gather: the records were read through a mapping.
    keys = write_records(tmp_path, range(20))
    (seg,) = segments(tmp_path)
    store = Store(str(tmp_path), refresh_ms=10_000)
    assert check_served(store, keys, 48) == 20  # verified and served once
    os.truncate(seg, 0)
    dest = torch.full((20, 48), -1, dtype=torch.int64)
    assert store.gather(keys, dest) == b"\x00" * 20
    assert store.stats()["faults"]["short_read"] >= 1
    assert "truncated" in store.take_faults()["short_read"]
    assert store.take_faults() == {}  # each kind is reported once per news


def test_segment_truncated_mid_file_serves_the_records_before_the_cut(tmp_path):
    keys = write_records(tmp_path, range(20))
    (seg,) = segments(tmp_path)
    store = Store(str(tmp_path), refresh_ms=10_000)
    assert check_served(store, keys, 48) == 20
    record = RECORD_HEADER + 48 * 8
    os.truncate(seg, 5 * record + 100)
    dest = torch.zeros(20, 48, dtype=torch.int64)
    served = store.gather(keys, dest)
    assert served == b"\x01" * 5 + b"\x00" * 15
    assert torch.equal(dest[:5], items_for(keys[:5], 48))


def test_removed_directory_makes_misses_not_errors(tmp_path):
    cache = tmp_path / "cache"
    keys = write_records(cache, range(4))
    store = Store(str(cache), refresh_ms=0)
    assert check_served(store, keys, 48) == 4
    shutil.rmtree(cache)
    assert store.lookup(keys_for([99])) == b"\x00"  # a miss triggers a refresh
    assert store.refresh() == 0
    assert store.stats()["faults"]["directory"] >= 1
    assert "cannot read cache directory" in store.take_faults()["directory"]
    assert store.put(keys_for([99]), items_for(keys_for([99]), 48)) == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_store_holds_its_directory_once_and_close_lets_it_go(tmp_path):
    # A refresh fstats the directory it listed last instead of a stat by path.
    cache = tmp_path / "cache"
    write_records(cache, range(2))
    base = dir_descriptors(cache)
    store = Store(str(cache), refresh_ms=0)
    assert dir_descriptors(cache) == base + 1
    for _ in range(3):
        store.lookup(keys_for([99]))  # misses: refreshes, each with a listing or an fstat
        assert store.refresh() == 0
    assert dir_descriptors(cache) == base + 1
    store.close()
    assert dir_descriptors(cache) == base
    with Store(None) as memory:
        memory.lookup(keys_for([1]))
    assert dir_descriptors(cache) == base


def test_new_segments_are_seen_at_the_next_miss_once_the_listing_is_trusted(tmp_path):
    # Past the mtime slack the refresh stops listing and compares the held
    # directory's mtime: a segment another writer made since must still show up.
    import time

    cache = tmp_path / "cache"
    write_records(cache, range(2))
    time.sleep(0.06)  # the store trusts a listing 50 ms after the mtime it saw
    reader = Store(str(cache), refresh_ms=0)
    for i in range(3):
        time.sleep(0.06)
        reader.lookup(keys_for([1000 + i]))  # a trusted listing: this refresh fstats
        keys = write_records(cache, [100 + i])  # another writer, a new segment
        assert reader.lookup(keys) == b"\x01", i
    assert reader.stats()["records"] == 5
    reader.close()


def test_removed_directory_is_seen_through_the_held_descriptor(tmp_path):
    import time

    cache = tmp_path / "cache"
    keys = write_records(cache, range(4))
    time.sleep(0.06)
    store = Store(str(cache), refresh_ms=0)
    time.sleep(0.06)
    store.lookup(keys_for([98]))
    shutil.rmtree(cache)
    assert store.lookup(keys_for([99])) == b"\x00"
    assert "cannot read cache directory" in store.take_faults()["directory"]
    cache.mkdir()  # made again under the same path: read from the next listing on
    new = write_records(cache, [7])
    assert store.lookup(new) == b"\x01"
    assert len(keys) == 4


def test_directory_renamed_away_and_replaced_is_read_within_a_second(tmp_path):
    # The held descriptor is the old directory (its mtime does not move): the
    # forced listing, at most READDIR_FORCE_NS (1 s) after the last, opens the path.
    import time

    cache = tmp_path / "cache"
    write_records(cache, range(4))
    time.sleep(0.06)
    store = Store(str(cache), refresh_ms=0)
    time.sleep(0.06)
    store.lookup(keys_for([98]))
    os.rename(cache, tmp_path / "old")
    new = write_records(cache, [7])
    deadline = time.monotonic() + 5
    while store.lookup(new) != b"\x01":
        assert time.monotonic() < deadline, "the replaced directory was never listed"
        time.sleep(0.05)
    store.close()


def test_removed_segments_read_as_misses_and_count_gone(tmp_path):
    write_records(tmp_path, range(6))
    write_records(tmp_path, range(10, 16))
    # At RLIMIT_NOFILE=64 the reader keeps one segment descriptor between calls:
    # that segment's records stay readable after the unlink (the open file keeps
    # its bytes); the other is gone at its reopen, and the refresh that follows
    # (looking for other copies of its records) finds the first one gone too.
    code = f"""
import os, resource, torch
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from store_helpers import keys_for
from torchcache_c._C import Store
s = Store({str(tmp_path)!r}, refresh_ms=10_000)
for seg in {[str(p) for p in segments(tmp_path)]!r}:
    os.unlink(seg)
keys = keys_for([*range(6), *range(10, 16)])
dest = torch.zeros(12, 48, dtype=torch.int64)
print(sum(s.gather(keys, dest)), s.stats()["gone"], sum(s.stats()["faults"].values()))
"""
    assert run_python(code).split() == ["6", "2", "0"]


def test_fd_limit_reader_serves_every_record_with_two_descriptors(tmp_path):
    # 300 segments under RLIMIT_NOFILE=64: was part of the directory indexed
    # silently, then OSError at the next miss.
    cache = tmp_path / "cache"
    for i in range(300):
        k = keys_for([i])
        with Store(str(cache)) as w:
            w.put(k, items_for(k, 4))
    assert len(segments(cache)) == 300
    code = f"""
import os, resource, time
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from store_helpers import keys_for, check_served, dir_descriptors
from torchcache_c._C import Store
base = len(os.listdir("/proc/self/fd"))
time.sleep(0.06)  # past the mtime slack: the open's listing is trusted
s = Store({str(cache)!r}, refresh_ms=0)
keys = keys_for(range(300))
served = check_served(s, keys, 4)
readdirs = s.stats()["readdirs"]
s.lookup(keys_for([1000]))  # a miss: a refresh, which stats the path (no listing)
assert s.stats()["readdirs"] == readdirs
fds = len(os.listdir("/proc/self/fd")) - base
held = dir_descriptors({str(cache)!r})
print(served, fds, s.stats()["open_fds"], sum(s.stats()["faults"].values()), held)
"""
    served, fds, open_fds, faults, held = map(int, run_python(code).split())
    assert served == 300 and faults == 0
    assert fds <= 2 and open_fds <= 2
    assert held == 0  # descriptors are scarce: a refresh stats the path instead


def test_put_without_descriptors_stores_nothing_and_keeps_serving(tmp_path):
    write_records(tmp_path, range(3))
    code = f"""
import os
from store_helpers import keys_for, items_for, check_served
from torchcache_c._C import Store
s = Store({str(tmp_path)!r}, refresh_ms=0)
keys = keys_for(range(3))
assert check_served(s, keys, 48) == 3
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
new = keys_for([50])
stored = s.put(new, items_for(new, 48))
faults = sorted(s.take_faults())
for fd in held:
    os.close(fd)
print(stored, check_served(s, keys, 48), *faults)
"""
    assert run_python(code).split() == ["0", "3", "write"]


def test_store_opened_without_descriptors_left_works_once_they_are_back(tmp_path):
    write_records(tmp_path, range(3))
    code = f"""
import os
from store_helpers import keys_for, check_served
from torchcache_c._C import Store
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
s = Store({str(tmp_path)!r}, refresh_ms=0)  # the listing fails: EMFILE
first = sum(s.lookup(keys_for(range(3))))
kinds = sorted(s.take_faults())
for fd in held:
    os.close(fd)
print(first, check_served(s, keys_for(range(3)), 48), *kinds)
"""
    assert run_python(code).split() == ["0", "3", "directory"]


def test_segment_descriptors_are_never_stdio(tmp_path):
    # With stdin, stdout and stderr closed, a segment used to become fd 0-2 and a
    # stray write to stderr landed in the cache.
    code = f"""
import os
from store_helpers import keys_for, items_for, check_served
from torchcache_c._C import Store
out = os.dup(1)
for fd in (0, 1, 2):
    os.close(fd)
s = Store({str(tmp_path)!r})
keys = keys_for(range(3))
s.put(keys, items_for(keys, 48))
low = [os.readlink(f"/proc/self/fd/{{fd}}") for fd in (0, 1, 2)
       if os.path.exists(f"/proc/self/fd/{{fd}}")]
os.write(out, (str(check_served(s, keys, 48)) + " " + str(low)).encode())
"""
    served, low = run_python(code).split(" ", 1)
    assert served == "3" and ".tcs" not in low
    assert check_served(Store(str(tmp_path)), keys_for(range(3)), 48) == 3
    assert Store(str(tmp_path)).verify()["corrupt"] == 0


# ---- a writer's own records, late bytes ----------------------------------------------

def test_writer_verifies_its_own_records_at_first_use(tmp_path):
    store = Store(str(tmp_path))
    keys = keys_for(range(3))
    store.put(keys, items_for(keys, 48))
    (seg,) = segments(tmp_path)
    record = RECORD_HEADER + 48 * 8
    with open(seg, "r+b") as f:  # the page changed on disk after the write
        f.seek(record + RECORD_HEADER + 8)
        f.write(b"\x11" * 64)
    assert list(store.lookup(keys)) == [1, 0, 1]
    assert store.stats()["corrupt"] == 1


def test_pending_tail_is_read_again_when_its_bytes_arrive(tmp_path):
    # NFS can show a segment's new length before its bytes: zeros at first.
    src = tmp_path / "src"
    keys = write_records(src, range(2))
    (seg,) = segments(src)
    data = seg.read_bytes()
    record = len(data) // 2
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / seg.name
    target.write_bytes(data[:record] + b"\x00" * record)
    store = Store(str(cache), refresh_ms=0)
    assert list(store.lookup(keys)) == [1, 0]
    with open(target, "r+b") as f:
        f.seek(record)
        f.write(data[record:])
    os.utime(target, ns=(0, 10**18))  # mtime moves with the write (coarse clocks)
    assert list(store.lookup(keys)) == [1, 1]
    assert check_served(store, keys, 48) == 2


# ---- hostile entries --------------------------------------------------------------------

def test_hostile_entries_named_like_segments_do_not_stall_a_reader(tmp_path):
    keys = write_records(tmp_path, range(5))
    os.mkfifo(tmp_path / "seg-fifo-1-0.tcs")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "seg-sock-1-0.tcs"))
    (tmp_path / "seg-dir-1-0.tcs").mkdir()
    with open(tmp_path / "seg-sparse-1-0.tcs", "wb") as f:
        f.truncate(1 << 40)  # 1 TiB of hole, no disk used
    os.symlink("/dev/zero", tmp_path / "seg-link-1-0.tcs")
    # A subprocess with a deadline: a FIFO opened without O_NONBLOCK would hang.
    code = f"""
import time
from store_helpers import keys_for, check_served
from torchcache_c._C import Store
t = time.perf_counter()
s = Store({str(tmp_path)!r}, refresh_ms=0)
served = check_served(s, keys_for(range(5)), 48)
s.lookup(keys_for([77]))
st = s.stats()
print(served, st["skipped"], st["segments"], round(time.perf_counter() - t, 3))
"""
    served, skipped, nsegs, _ = run_python(code, timeout=60).split()
    sock.close()
    assert served == "5"
    assert skipped == "4"  # fifo, socket, dir, link; the sparse file is a segment
    assert nsegs == "2"
    del keys


M64 = (1 << 64) - 1


def fmix64(z: int) -> int:
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & M64
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & M64
    return z ^ (z >> 33)


def forged_header(key0: int, key1: int, payload_len: int) -> bytes:
    """A v1 header (docs/format.md, sections 3-4) with a valid header_sum for a
    uint8 item of payload_len bytes, as a hostile writer would make one."""
    words = [0x31524354 | 1 << 32 | 1 << 48, key0, key1, 1 | 8 << 8 | 1 << 16,
             payload_len, payload_len, 0, 0, payload_len] + [0] * 7
    a = 0x74637368647231
    for w in words:
        a = (fmix64(a ^ w) + 0x9E3779B97F4A7C15) & M64
    words[7] = a
    return struct.pack("<16Q", *words)


def test_header_claiming_a_terabyte_over_a_hole_is_refused_unhashed(tmp_path):
    # Hashing the terabyte of zeros took about 45 minutes per reader.
    with open(tmp_path / "seg-forged-1-0.tcs", "wb") as f:
        f.write(forged_header(5, 7, 1 << 40))
        f.truncate(RECORD_HEADER + (1 << 40))
    code = f"""
import torch
from torchcache_c._C import Store
s = Store({str(tmp_path)!r}, refresh_ms=0)
keys = torch.tensor([[5, 7]])
print(s.stats()["records"], list(s.lookup(keys)), s.stats()["corrupt"])
"""
    assert run_python(code, timeout=60).split() == ["1", "[0]", "1"]


def test_non_regular_file_is_never_opened_for_reading(tmp_path):
    write_records(tmp_path, range(1))
    fifo = tmp_path / "seg-late-1-0.tcs"
    os.mkfifo(fifo)
    store = Store(str(tmp_path), refresh_ms=0)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert store.stats()["skipped"] == 1
    assert store.refresh() == 0 and store.stats()["skipped"] == 1  # looked at once


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a device node")
def test_device_named_like_a_segment_is_skipped(tmp_path):
    write_records(tmp_path, range(1))
    os.mknod(tmp_path / "seg-dev-1-0.tcs", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    store = Store(str(tmp_path), refresh_ms=0)
    assert store.stats()["skipped"] == 1 and store.stats()["records"] == 1
