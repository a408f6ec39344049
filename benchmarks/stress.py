"""Load: several processes hammer one persistent cache directory at once.

Each process loops for --seconds over cached calls of random batch sizes: most
batches draw items from a shared hot set (which every process fills at the same
time, so equal keys race to be written), the rest draw new items (misses).
Every output served is checked bit for bit against the uncached module (the
module is elementwise, so an item's value does not depend on its batch).
Reported: items/s and calls/s (total and per process), against the uncached
module's calls/s measured in this run; wrong outputs and errors, which must be 0;
and a fresh reader's view of the directory afterwards (corrupt must be 0).

Usage: python benchmarks/stress.py [--processes 4] [--seconds 60] [--dir DIR]
Exit status 1 if any output was wrong or any call raised.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from torchcache_c import _C, torchcache

FEATURES = 32
HOT_ITEMS = 20_000
MAX_BATCH = 32


class Elementwise(torch.nn.Module):
    """Exactly rounded elementwise ops: each item's output is batch-independent."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.register_buffer("weight", torch.randn(FEATURES, generator=g))
        self.register_buffer("bias", torch.randn(FEATURES, generator=g))

    def forward(self, x):
        return torch.relu(x * self.weight + self.bias) * 0.5


def inputs(ids) -> torch.Tensor:
    """Distinct inputs for distinct ids below 2**31, in exact integer arithmetic."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1, 1)
    j = torch.arange(FEATURES, dtype=torch.int64)
    return ((ids * 2654435761 + j * 40503) % 2147483647).to(torch.float32) / 2**31 - 0.5


def batch_ids(rng: random.Random, miss_fraction: float) -> list:
    n = rng.randint(1, MAX_BATCH)
    if rng.random() < miss_fraction:
        return [rng.randrange(HOT_ITEMS, 1 << 31) for _ in range(n)]
    return [rng.randrange(HOT_ITEMS) for _ in range(n)]


def worker(rank: int, cache_dir: str, seconds: float, miss_fraction: float, start, results):
    torch.set_num_threads(1)
    model = torchcache(persistent=True, persistent_cache_dir=cache_dir)(Elementwise)().eval()
    plain = Elementwise().eval()
    rng = random.Random(rank)
    calls = items = wrong = errors = 0
    first_error = None
    start.wait()
    deadline = time.monotonic() + seconds
    with torch.no_grad():
        while time.monotonic() < deadline:
            x = inputs(batch_ids(rng, miss_fraction))
            try:
                out = model(x)
                wrong += int((out != plain(x)).any(dim=1).sum())
            except Exception as exc:  # counted and reported, the run goes on
                errors += 1
                first_error = first_error or repr(exc)
            calls += 1
            items += x.shape[0]
    stats = model.cache_instance.stats()
    results.put({"rank": rank, "calls": calls, "items": items, "wrong": wrong,
                 "errors": errors, "first_error": first_error, "hits": stats["hits"],
                 "misses": stats["misses"], "seconds": seconds})


def uncached_calls_per_second(seconds: float, miss_fraction: float) -> float:
    """The reference: the uncached module on the same batches, one process."""
    torch.set_num_threads(1)
    plain = Elementwise().eval()
    rng = random.Random(0)
    calls = 0
    deadline = time.monotonic() + seconds
    with torch.no_grad():
        while time.monotonic() < deadline:
            plain(inputs(batch_ids(rng, miss_fraction)))
            calls += 1
    return calls / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--miss-fraction", type=float, default=0.1,
                    help="fraction of batches made of new items (default 0.1)")
    ap.add_argument("--dir", help="cache directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="torchcache_c-stress-"))
    try:
        ctx = mp.get_context("spawn")
        start, results = ctx.Barrier(args.processes), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(r, str(root), args.seconds,
                                                  args.miss_fraction, start, results))
                 for r in range(args.processes)]
        for p in procs:
            p.start()
        rows = [results.get() for _ in procs]
        for p in procs:
            p.join()
        rows.sort(key=lambda r: r["rank"])
        reference = uncached_calls_per_second(min(5.0, args.seconds), args.miss_fraction)
        dirs = [p for p in root.iterdir() if p.is_dir()]
        fresh = [_C.Store(str(d), refresh_ms=0).stats() for d in dirs]
        disk = sum(sum(f.stat().st_size for f in d.glob("seg-*.tcs")) for d in dirs)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    print(f"{args.processes} processes, {args.seconds:g} s, miss fraction "
          f"{args.miss_fraction:g}, items of {FEATURES} float32, batches of 1..{MAX_BATCH}")
    print(f"{'rank':>4} {'calls/s':>9} {'items/s':>10} {'hit rate':>8} {'wrong':>6} {'errors':>6}")
    for r in rows:
        looked = r["hits"] + r["misses"]
        print(f"{r['rank']:>4} {r['calls'] / r['seconds']:>9.0f} "
              f"{r['items'] / r['seconds']:>10.0f} "
              f"{r['hits'] / max(looked, 1):>8.1%} {r['wrong']:>6} {r['errors']:>6}")
        if r["first_error"]:
            print(f"     first error: {r['first_error']}")
    calls = sum(r["calls"] for r in rows) / args.seconds
    items = sum(r["items"] for r in rows) / args.seconds
    wrong = sum(r["wrong"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    print(f"total {calls:.0f} calls/s, {items:.0f} items/s; wrong outputs {wrong}; errors {errors}")
    # The module is trivial on purpose (exact checks), so this ratio is the cost of
    # the cache per call against almost no work, with processes sharing the cores.
    print(f"uncached module, one process alone: {reference:.0f} calls/s; cached calls/s "
          f"per process / uncached: {calls / args.processes / reference:.2f} "
          f"({os.cpu_count()} CPUs for {args.processes} processes)")
    records = sum(f["records"] for f in fresh)
    corrupt = sum(f["corrupt"] for f in fresh)
    segs = sum(f["segments"] for f in fresh)
    print(f"directory afterwards (a fresh reader): {records} records in {segs} segments, "
          f"{disk / 2**20:.1f} MiB, corrupt {corrupt}")
    return 1 if wrong or errors or corrupt else 0


if __name__ == "__main__":
    raise SystemExit(main())
