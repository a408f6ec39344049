"""Store speed against references measured in the same run.

  gather: 256 random hits of 768 float32 out of 16384 stored, vs a plain memcpy of
          the same number of bytes (dest.copy_ of a contiguous block) and vs
          torch.index_select of the same rows (single-threaded, as gather is); the
          gather of one hit gives the fixed cost per call;
  put:    64 items of 1 MiB appended to a directory, vs os.write of the same bytes;
  open:   indexing a directory of 1,000,000 records (64-byte items);
  segments: a directory of 1 / 100 / 1,000 / 10,000 segments of one record each
          (written by writers that are gone, as in a long-lived shared cache):
          open time, the cost of one miss (which triggers a refresh), its ratio
          to the 1-segment miss, the reader's extra descriptors, records served.

Usage: python benchmarks/bench_store.py [DIR] [--segments-only]
       (DIR: where to write, default /tmp)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

from torchcache_c._C import Store


def best(f, n: int) -> float:
    t = float("inf")
    for _ in range(n):
        a = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - a)
    return t


def keys(first: int, n: int) -> torch.Tensor:
    ids = torch.arange(first, first + n)
    return torch.stack([ids, ids * 3 + 1], 1).contiguous()


def bench_gather(store: Store, src: torch.Tensor, label: str) -> None:
    n = len(src)
    store.put(keys(0, n), src)
    idx = torch.randperm(n)[:256]
    k = keys(0, n)[idx].contiguous()
    dest = torch.empty(256, 768)
    store.lookup(k)
    block = src[4096:4096 + 256]
    one_key, one_dest = k[:1].contiguous(), torch.empty(1, 768)
    g = best(lambda: store.gather(k, dest), 300)
    m = best(lambda: dest.copy_(block), 300)
    r = best(lambda: torch.index_select(src, 0, idx, out=dest), 300)
    f = best(lambda: store.gather(one_key, one_dest), 300)
    print(f"gather [{label}] 256 hits {g * 1e6:7.1f} us   memcpy {m * 1e6:7.1f} us   "
          f"index_select {r * 1e6:7.1f} us   ratio to memcpy {g / m:.2f}   "
          f"fixed cost (1 hit) {f * 1e6:5.1f} us")


def segment_dir(root: str, count: int) -> str:
    """count segments of one record each (key i in segment i), written by a
    forked child that then exits, as in a long-lived shared cache whose writers
    are gone.  Each is written in a scratch directory of its own and moved in
    under its name (records are bound to their segment's name, not its dir)."""
    d = tempfile.mkdtemp(dir=root)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            for i in range(count):
                scratch = tempfile.mkdtemp(dir=root)
                with Store(scratch) as w:
                    w.put(keys(i, 1), torch.randn(1, 16))
                (name,) = os.listdir(scratch)
                os.rename(os.path.join(scratch, name), os.path.join(d, name))
                os.rmdir(scratch)
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return d


def bench_segments(root: str) -> None:
    base_miss = None
    for count in (1, 100, 1000, 10000):
        d = segment_dir(root, count)
        fds0 = len(os.listdir("/proc/self/fd"))
        a = time.perf_counter()
        store = Store(d, refresh_ms=0)
        o = time.perf_counter() - a
        absent = keys(10**9, 1)
        store.lookup(absent)
        times = []
        for _ in range(200):
            a = time.perf_counter()
            store.lookup(absent)
            times.append(time.perf_counter() - a)
        miss_best, miss_mean = min(times), sum(times) / len(times)
        base_miss = base_miss or miss_best
        k = keys(0, count)
        served = sum(store.lookup(k))
        dest = torch.empty(count, 16)
        served = min(served, sum(store.gather(k, dest)))
        fds = len(os.listdir("/proc/self/fd")) - fds0
        print(f"segments {count:6d}: open {o * 1e3:8.1f} ms   miss {miss_best * 1e6:7.1f} us "
              f"(mean {miss_mean * 1e6:7.1f} us, x{miss_best / base_miss:5.1f} of 1 segment)   "
              f"extra fds {fds}   served {served}/{count}")
        store.close()


def main(root: str, segments_only: bool) -> None:
    torch.set_num_threads(1)
    bench_segments(root)
    if segments_only:
        return
    n = 16384
    src = torch.randn(n, 768)
    for where in (None, tempfile.mkdtemp(dir=root)):
        bench_gather(Store(where), src, "memory" if where is None else "dir")

    big = torch.randn(64, 1 << 18)
    raw = big.numpy().tobytes()
    d = tempfile.mkdtemp(dir=root)
    fd = os.open(os.path.join(d, "reference"), os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    a = time.perf_counter()
    for _ in range(4):
        os.write(fd, raw)
    w = time.perf_counter() - a
    os.close(fd)
    store = Store(d)
    a = time.perf_counter()
    for i in range(4):
        store.put(keys(i * 64, 64), big)
    p = time.perf_counter() - a
    gb = 4 * len(raw) / 1e9
    print(f"put {gb / p:5.2f} GB/s   os.write {gb / w:5.2f} GB/s   ratio {w / p:.2f}")

    d = tempfile.mkdtemp(dir=root)
    with Store(d) as store:
        for i in range(0, 1_000_000, 100_000):
            store.put(keys(i, 100_000), torch.randn(100_000, 16))
    a = time.perf_counter()
    store = Store(d)
    o = time.perf_counter() - a
    print(f"open of {store.stats()['records']} records: {o:.3f} s")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--segments-only"]
    main(args[0] if args else "/tmp", "--segments-only" in sys.argv)
