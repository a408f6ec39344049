"""Hash throughput against reading the same bytes (x.sum()) and copying them.

    python benchmarks/bench_hash.py [--batch 256] [--repeats 7]

Single thread by default (--threads sets torch.set_num_threads, which
hash_tensor follows too); prints GB/s of each and the ratios
hash / sum and hash / memcpy, medians of --repeats runs, all in this one run.
"""

import argparse
import statistics
import time

import torch

import torchcache_c
from torchcache_c import _C, hash_tensor


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--simd", choices=["portable", "avx2", "avx512"], default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, also used by hash_tensor (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.simd:
        _C._set_simd(args.simd)
    x = torch.randn(args.batch, 3, 224, 224)
    nbytes = x.numel() * x.element_size()
    dst = torch.empty_like(x)
    t_hash = _median_seconds(lambda: hash_tensor(x), args.repeats)
    t_sum = _median_seconds(lambda: x.sum(), args.repeats)
    t_copy = _median_seconds(lambda: dst.copy_(x), args.repeats)
    t_sub = _median_seconds(lambda: hash_tensor(x, subsample_count=10000), args.repeats)
    info = torchcache_c.build_info()
    print(f"batch {tuple(x.shape)} float32, {nbytes / 1e6:.1f} MB, {args.threads} thread(s), "
          f"simd={info['simd']}, median of {args.repeats}")
    for name, t in [("hash_tensor (full)", t_hash), ("x.sum()", t_sum),
                    ("memcpy (copy_)", t_copy), ("hash_tensor (subsample 10000)", t_sub)]:
        print(f"  {name:32s} {t * 1e3:8.2f} ms  {nbytes / t / 1e9:6.2f} GB/s read")
    print(f"ratio hash/sum    = {t_sum / t_hash:.2f}  (target >= 0.8)")
    print(f"ratio hash/memcpy = {t_copy / t_hash:.2f}")


if __name__ == "__main__":
    main()
