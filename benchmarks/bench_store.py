"""Store speed against references measured in the same run.

  gather: 256 random hits of 768 float32 out of 16384 stored, vs a plain memcpy of
          the same number of bytes (dest.copy_ of a contiguous block) and vs
          torch.index_select of the same rows (single-threaded, as gather is); the
          gather of one hit gives the fixed cost per call;
  put:    64 items of 1 MiB appended to a directory, vs os.write of the same bytes;
  open:   indexing a directory of 1,000,000 records (64-byte items).

Usage: python benchmarks/bench_store.py [DIR]  (DIR: where to write, default /tmp)
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


def main(root: str) -> None:
    torch.set_num_threads(1)
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
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp")
