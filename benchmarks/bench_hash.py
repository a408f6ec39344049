"""CPU hash speed against reading the same bytes and against two other hashes, in one run.

    python benchmarks/bench_hash.py [--repeats 7] [--threads 1,2] [--sizes 154,1233]
                                    [--simd avx2] [--runs 3] [--quick]

Part 1, bulk: for each working set (default 154 MB = 256x3x224x224 float32, and 1.2 GB =
2048 such items) and each thread count (1 .. nproc; torch.set_num_threads, which
hash_tensor follows too), the median time of
  - hash_tensor(x)                                 (tch128-v2, this package)
  - x.sum()                                        (reads every byte once: the floor)
  - XXH3-128 of the same buffer (python-xxhash)    (one thread: xxhash has none)
  - BLAKE3 of the same buffer (blake3 wheel, max_threads = threads)
  - hash_tensor(x) right after a parallel torch op (untimed), as a training loop
    calls a cache after its last op: torch's OpenMP workers spin for a while after
    a parallel region, so the hash's threads meet busy cores unless they are that
    runtime's own team (hash_batch.c); and the same on threads of the hash's own
    (_C._threads_runtime(allow_openmp=False)), the way it ran before 2026-11-29
The methods run round-robin in every repeat, so drift on a shared machine hits all
of them alike.  Target: hash / sum >= 0.85 at every size and thread count, alone and
right after a torch op.

Part 2, items: ns per item for hash_tensor on an (N, item) batch (one thread) and
for XXH3-128 of each item, from memory (128 MiB of items) and in cache (4 MiB: more than
L2, within L3 on most machines; enough items that hash_tensor's per-call cost, a few
microseconds, is not counted per item).  Next to them, the floor of tch128-v2's finish:
the fmix64 that the definition needs per item (docs/hash.md, section 9) times the
fastest this core runs independent fmix64 (a C loop of scalar, AVX2 and mixed chains,
compiled at run time); where floor/XXH3 is above 2, no v2 engine can meet the target.
What is compared: both sides are C loops over the items of one batch on one thread,
timed in that thread's CPU time (hash_tensor: one call for the whole batch, whose fixed
cost of a few microseconds is spread over thousands of items; XXH3-128: one
XXH3_128bits call per item from a C loop, no Python per item).
XXH3-128 is python-xxhash's own XXH3_128bits called from a small C loop (built
with the system C compiler at run time) so no Python call overhead is counted;
without a compiler it falls back to a Python loop minus the measured cost of
hashing empty items, and says so.  Both run on the calling thread, so they are timed in
that thread's CPU time: on a shared machine a call that the OS preempts would otherwise
be charged a whole time slice, which penalises the longer call of the two.  Target:
items of 128 B .. 3 KB at <= 2x XXH3-128.

Prints the CPU as /proc/cpuinfo names it and the load average before and after.  With
--runs N everything runs N times and a summary gives each ratio's best and its spread:
on a shared machine the best of several runs is the figure least disturbed by others.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import blake3
import torch
import xxhash
from _machine import cpu_description, load_average

import torchcache_c
from torchcache_c import _C, hash_tensor

ITEM_SHAPE = (3, 224, 224)


def round_robin(fns: dict, repeats: int, clock=time.perf_counter) -> dict:
    """Median seconds of each function; every repeat runs all of them once.  A value
    may be (before, fn, after): before() and after() run untimed around fn()."""
    def parts(f):
        return f if isinstance(f, tuple) else (None, f, None)
    for f in fns.values():
        before, fn, after = parts(f)
        for step in (before, fn, after):
            if step is not None:
                step()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            before, fn, after = parts(f)
            if before is not None:
                before()
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
            if after is not None:
                after()
    return {name: statistics.median(ts) for name, ts in times.items()}


def _blake3(data, threads: int) -> bytes:
    return blake3.blake3(data, max_threads=threads).digest()


def _python_loop(fn, views) -> None:
    for v in views:
        fn(v)


def bulk(sizes_mb, thread_counts, repeats: int) -> dict:
    """Prints the bulk table; returns {(MB, threads): hash/sum}."""
    ratios = {}
    print("\n## Bulk: GB/s (median of %d), ratio to x.sum() at the same thread count" % repeats)
    item_bytes = 4 * ITEM_SHAPE[0] * ITEM_SHAPE[1] * ITEM_SHAPE[2]
    # A torch op that runs on torch's threads (1M elements: above its grain size) and
    # costs ~0.1 ms: the last op of a training step before the next cached call.
    op = torch.randn(1 << 20)
    for mb in sizes_mb:
        batch = max(1, round(mb * 1e6 / item_bytes))
        x = torch.randn(batch, *ITEM_SHAPE)
        nbytes = x.numel() * x.element_size()
        flat = x.numpy().reshape(-1).view("uint8")
        print(f"\n{tuple(x.shape)} float32, {nbytes / 1e6:.0f} MB")
        print(f"{'threads':>7} {'hash_tensor':>12} {'after op':>9} {'own thr.':>9} {'x.sum()':>9}"
              f" {'XXH3-128':>9} {'BLAKE3':>8} {'hash/sum':>9} {'after op/sum':>13}"
              f" {'own thr./sum':>13} {'hash/XXH3':>10} {'XXH3/sum':>9}")
        runtime = _C._threads_runtime()
        for threads in thread_counts:
            torch.set_num_threads(threads)
            t = round_robin({
                "hash": partial(hash_tensor, x),
                "op": (op.sum, partial(hash_tensor, x), None),
                "own": (lambda: (_C._threads_runtime(allow_openmp=False), op.sum()),
                        partial(hash_tensor, x),
                        lambda: _C._threads_runtime(allow_openmp=True)),
                "sum": x.sum,
                "xxh3": partial(xxhash.xxh3_128_intdigest, flat),
                "blake3": partial(_blake3, flat, threads),
            }, repeats)
            gbs = {k: nbytes / v / 1e9 for k, v in t.items()}
            hash_sum = t["sum"] / t["hash"]
            op_sum = t["sum"] / t["op"]
            ratios[(mb, threads)] = hash_sum
            ratios[(mb, threads, "after op")] = op_sum
            print(f"{threads:>7} {gbs['hash']:>12.2f} {gbs['op']:>9.2f} {gbs['own']:>9.2f}"
                  f" {gbs['sum']:>9.2f} {gbs['xxh3']:>9.2f} {gbs['blake3']:>8.2f}"
                  f" {hash_sum:>9.2f} {op_sum:>13.2f} {t['sum'] / t['own']:>13.2f}"
                  f" {t['xxh3'] / t['hash']:>10.2f} {t['sum'] / t['xxh3']:>9.2f}   "
                  f"{'met' if min(hash_sum, op_sum) >= 0.85 else 'MISSED'} (>= 0.85)")
        print(f"  after op: hash_tensor right after a parallel torch op (as in a training "
              f"loop), its threads from {runtime}; own thr.: the same on threads of its own "
              "(made per call)")
    return ratios


_XXH_LOOP_C = r"""
#include <stddef.h>
#include <stdint.h>
/* XXH128_hash_t of xxhash.h, returned by value. */
typedef struct { uint64_t low64, high64; } xxh128;
typedef xxh128 (*xxh3_128_fn)(const void *, size_t);
uint64_t xxh3_items(void *fn, const unsigned char *base, size_t item, size_t n)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        xxh128 h = ((xxh3_128_fn)fn)(base + i * item, item);
        acc += h.low64 ^ h.high64;
    }
    return acc;
}
"""


def xxh3_items_c():
    """(fn(base_ptr, item, n), label) calling python-xxhash's XXH3_128bits from C, or None."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    try:
        xxlib = ctypes.CDLL(xxhash._xxhash.__file__)
        fn = ctypes.cast(xxlib.XXH3_128bits, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return None
    tmp = Path(tempfile.mkdtemp(prefix="bench_hash_"))
    (tmp / "loop.c").write_text(_XXH_LOOP_C)
    try:
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp / "loop.so"),
                        str(tmp / "loop.c")], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    lib = ctypes.CDLL(str(tmp / "loop.so"))
    lib.xxh3_items.restype = ctypes.c_uint64
    lib.xxh3_items.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                               ctypes.c_size_t]
    return (lambda base, item, n: lib.xxh3_items(fn, base, item, n),
            "python-xxhash's XXH3_128bits in a C loop")


_FMIX_LOOP_C = r"""
#include <stdint.h>
#include <time.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
/* fmix64 of docs/hash.md, section 2; the empty asm keeps the scalar chains in
 * general registers (the compiler would vectorise them otherwise). */
static inline uint64_t fm(uint64_t z)
{
    __asm__("" : "+r"(z));
    z ^= z >> 33; z *= 0xff51afd7ed558ccdULL; z ^= z >> 33; z *= 0xc4ceb9fe1a85ec53ULL;
    return z ^ (z >> 33);
}
#ifdef __AVX2__
/* As csrc/hash_avx2.c: lo x lo with vpmuludq, both cross terms with one vpmulld
 * against the halves of the constant swapped (sw). */
static inline __m256i mul64(__m256i z, long long lo, long long sw)
{
    __m256i l = _mm256_set1_epi64x(lo), s = _mm256_set1_epi64x(sw);
    __m256i p = _mm256_mullo_epi32(z, s);
    __m256i c = _mm256_add_epi64(p, _mm256_slli_epi64(p, 32));
    return _mm256_add_epi64(_mm256_mul_epu32(z, l),
                            _mm256_blend_epi32(_mm256_setzero_si256(), c, 0xAA));
}
static inline __m256i f4(__m256i z)
{
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 33));
    z = mul64(z, 0xed558ccdLL, (long long)0xed558ccdff51afd7ULL);
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 33));
    z = mul64(z, 0x1a85ec53LL, 0x1a85ec53c4ceb9feLL);
    return _mm256_xor_si256(z, _mm256_srli_epi64(z, 33));
}
#endif
static double cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
/* ns per fmix64 with independent chains: kind 0 scalar (6 chains), 1 AVX2 (4
 * registers of 4 lanes), 2 both (16 lanes in registers + 4 scalar chains). */
double fmix_ns(int kind, long rounds, uint64_t *sink)
{
    uint64_t s0 = 1, s1 = 2, s2 = 3, s3 = 4, s4 = 5, s5 = 6;
    double t = cpu(), n = 0;
#ifdef __AVX2__
    __m256i v0 = _mm256_set1_epi64x(7), v1 = _mm256_set1_epi64x(8);
    __m256i v2 = _mm256_set1_epi64x(9), v3 = _mm256_set1_epi64x(10);
#endif
    for (long i = 0; i < rounds; i++) {
        if (kind == 0) {
            s0 = fm(s0); s1 = fm(s1); s2 = fm(s2); s3 = fm(s3); s4 = fm(s4); s5 = fm(s5);
            n += 6;
        }
#ifdef __AVX2__
        else {
            v0 = f4(v0); v1 = f4(v1); v2 = f4(v2); v3 = f4(v3);
            n += 16;
            if (kind == 2) {
                s0 = fm(s0); s1 = fm(s1); s2 = fm(s2); s3 = fm(s3);
                n += 4;
            }
        }
#endif
    }
    t = cpu() - t;
#ifdef __AVX2__
    v0 = _mm256_xor_si256(_mm256_xor_si256(v0, v1), _mm256_xor_si256(v2, v3));
    s5 ^= (uint64_t)_mm256_extract_epi64(v0, 0);
#endif
    *sink = s0 ^ s1 ^ s2 ^ s3 ^ s4 ^ s5;
    return t / n * 1e9;
}
"""


def fmix_floor():
    """ns per fmix64 at the best mix this CPU runs (scalar; AVX2 lanes; both), or None."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    avx2 = "avx2" in cpu_description()
    tmp = Path(tempfile.mkdtemp(prefix="bench_hash_fmix_"))
    (tmp / "fmix.c").write_text(_FMIX_LOOP_C)
    flags = ["-O2", "-shared", "-fPIC"] + (["-mavx2"] if avx2 else [])
    try:
        subprocess.run([cc, *flags, "-o", str(tmp / "fmix.so"), str(tmp / "fmix.c")],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    lib = ctypes.CDLL(str(tmp / "fmix.so"))
    lib.fmix_ns.restype = ctypes.c_double
    lib.fmix_ns.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.POINTER(ctypes.c_uint64)]
    sink = ctypes.c_uint64()
    kinds = {"scalar": 0, "AVX2": 1, "AVX2 + scalar": 2} if avx2 else {"scalar": 0}
    return {name: min(lib.fmix_ns(k, 2_000_000, ctypes.byref(sink)) for _ in range(5))
            for name, k in kinds.items()}


def fmix_count(item: int) -> int:
    """fmix64 that tch128-v2 needs for a 1-d item of `item` bytes (docs/hash.md, section 9):
    1 per lane holding data in each block (lanes of pure padding are constants), 2 per
    block term, and 2 for the item (the metadata digest is formed once per batch)."""
    blocks, rest = divmod(item, 16384)
    lanes = [32] * blocks + ([min(32, -(-rest // 8))] if rest else [])
    return sum(n + 2 for n in lanes) + 2


def items(item_sizes, repeats: int) -> dict:
    """Prints the item table; returns {(item bytes, working set): hash/XXH3}."""
    ratios = {}
    torch.set_num_threads(1)
    xxh_c = xxh3_items_c()
    how = xxh_c[1] if xxh_c else "python loop minus the cost of hashing empty items"
    print(f"\n## Items: ns per item, one thread, median of {repeats} in CPU time of this "
          f"thread (XXH3-128: {how})")
    floor = fmix_floor()
    fmix_best = min(floor.values()) if floor else None
    if floor:
        print("fmix64, ns each with independent chains in a tight C loop: "
              + ", ".join(f"{k} {v:.2f}" for k, v in floor.items())
              + f"; 'floor' = the item's fmix64 count (docs/hash.md, section 9) x {fmix_best:.2f}"
              " ns, before a byte is read")
    print(f"{'item':>9} {'working set':>11} {'hash_tensor':>12} {'XXH3-128':>9} {'hash/XXH3':>10}"
          f" {'floor':>7} {'floor/XXH3':>10}")
    for item in item_sizes:
        for label, total in (("memory", 128 << 20), ("in cache", 4 << 20)):
            n = max(1, total // item)
            x = torch.randint(0, 256, (n, item), dtype=torch.uint8)
            flat = x.numpy().reshape(-1)
            if xxh_c:
                t = round_robin({"hash": partial(hash_tensor, x),
                                 "xxh3": partial(xxh_c[0], x.data_ptr(), item, n)}, repeats,
                                clock=time.thread_time)
            else:
                mv = memoryview(flat)
                views = [mv[i * item:(i + 1) * item] for i in range(n)]
                f = xxhash.xxh3_128_intdigest
                t = round_robin({"hash": partial(hash_tensor, x),
                                 "xxh3": partial(_python_loop, f, views),
                                 "empty": partial(_python_loop, f, [mv[0:0]] * n)}, repeats,
                                clock=time.thread_time)
                t["xxh3"] = max(t["xxh3"] - t["empty"], 1e-12)
            ratio = t["hash"] / t["xxh3"]
            ratios[(item, label)] = ratio
            target = ""
            if 128 <= item <= 3072:
                target = f"   {'met' if ratio <= 2.0 else 'MISSED'} (<= 2.0)"
            fl = fmix_count(item) * fmix_best if fmix_best else float("nan")
            print(f"{item:>9} {label:>11} {t['hash'] / n * 1e9:>12.1f} "
                  f"{t['xxh3'] / n * 1e9:>9.1f} {ratio:>10.2f} {fl:>7.1f}"
                  f" {fl / (t['xxh3'] / n * 1e9):>10.2f}{target}")
    return ratios


def summary(runs: list) -> None:
    """Best and spread of every ratio over the runs, and the targets the best meets."""
    print(f"\n## Summary over {len(runs)} run(s): best ratio, and the spread (worst..best)")
    bulk_keys = sorted({k for r in runs for k in r[0]}, key=lambda k: (k[:2], len(k)))
    for key in bulk_keys:
        mb, threads = key[:2]
        vals = [r[0][key] for r in runs]
        best = max(vals)
        what = "hash/sum" if len(key) == 2 else "hash right after a torch op/sum"
        print(f"bulk {mb:>7.0f} MB, {threads} thread(s): {what} best {best:.2f} "
              f"(spread {min(vals):.2f}..{best:.2f})   "
              f"{'met' if best >= 0.85 else 'MISSED'} (>= 0.85)")
    item_keys = list(dict.fromkeys(k for r in runs for k in r[1]))
    for item, label in item_keys:
        vals = [r[1][(item, label)] for r in runs]
        best = min(vals)
        target = ""
        if 128 <= item <= 3072:
            target = f"   {'met' if best <= 2.0 else 'MISSED'} (<= 2.0)"
        print(f"items {item:>7} B {label:>9}: hash/XXH3 best {best:.2f} "
              f"(spread {max(vals):.2f}..{best:.2f}){target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default 1..nproc)")
    ap.add_argument("--sizes", default="154,1233", help="bulk working sets in MB")
    ap.add_argument("--items", default="128,256,320,384,448,512,1024,3072,16384,65536,602112",
                    help="item sizes in bytes for the per-item sweep")
    ap.add_argument("--simd", choices=["portable", "avx2", "avx512"], default=None)
    ap.add_argument("--runs", type=int, default=1,
                    help="run everything this many times and summarise the best ratio and "
                         "the spread of each (for a shared, noisy machine)")
    ap.add_argument("--quick", action="store_true", help="3 repeats, 154 MB only")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.sizes = 3, "154"
    if args.simd:
        _C._set_simd(args.simd)
    nproc = os.cpu_count() or 1
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else list(range(1, nproc + 1)))
    info = torchcache_c.build_info()
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, torchcache_c {info['version']} ({info['hash']}, "
          f"simd {info['simd']}), python-xxhash {xxhash.VERSION}, blake3 {blake3.__version__}")
    print(f"load average before: {load_average()}")
    runs = []
    for run in range(args.runs):
        if args.runs > 1:
            print(f"\n# Run {run + 1} of {args.runs} (load average {load_average()})")
        runs.append((bulk([float(s) for s in args.sizes.split(",")], threads, args.repeats),
                     items([int(s) for s in args.items.split(",")], args.repeats)))
    if args.runs > 1:
        summary(runs)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
