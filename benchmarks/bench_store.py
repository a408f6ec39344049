"""Store speed against references measured in the same run.

  gather: 256 hits of 768 float32 (3 KB) out of 16384 stored, random rows and
          rows stored by one put, vs a plain memcpy of the same number of bytes
          (dest.copy_ of a contiguous block) and vs torch.index_select of the same
          rows (single-threaded, as gather is); the gather of one hit gives the
          fixed cost per call;
  first:  in a fresh process (a new interpreter), open + the first lookup and
          gather of 256 random hits against the same call repeated (warm), with
          the page cache warm and after fsync + posix_fadvise(DONTNEED).  The
          binding's first calls (one lookup and gather of a key not held) run
          before and are timed apart: torch's first __dlpack__ in a process
          costs ~0.15 ms of Python work that is not the store's; the binding's
          ratio puts it back.  The warm call re-reads the same 786 KB, which stay
          in the CPU's L2/L3; the epoch steady state is the other reference: the
          median call of a warm process's third pass over all 16,384 records in
          batches of 256 (each call reads records last read 63 calls ago, out of
          the CPU caches, as a training epoch does).  The floor, in its own fresh
          process alternated with the store's: pread_floor.c (built here with $CC,
          cc or gcc; skipped without one) reads the file front to back as the
          store's open does, then the same records as the two calls with one
          preadv each (header, payload into its row) and nothing else: its own
          first/warm is what reading these records costs the first time against
          the tenth on this machine, with no store at all; store/floor says what
          the store adds.  The same program with "mmap" copies the records out of
          a mapping of the file made present with MAP_POPULATE (what the store
          does not do: a file cut short under a mapping raises SIGBUS);
  put:    64 items of 1 MiB appended to a directory, vs os.write of the same bytes;
          and 256 records of 3 KB per call (the shape of a training batch), vs one
          os.write of the same bytes per call;
  arena put: 100,000 records of 3 KB put in calls of 1,000 into a fresh
          memory store (Store(None)), the cost per record in the first 10k,
          the 40-50k and the 90-100k records, vs copying the same bytes into
          memory already faulted in, and into fresh memory (mapped as the
          arena maps its chunks, with MADV_HUGEPAGE; and with 4 KiB pages) at
          the same stride: what the first write to new memory costs on this
          machine, which the arena cannot avoid;
  open:   indexing a directory of 1,000,000 records (64-byte items) written by one
          store, with the index file its writer left at close (docs/format.md,
          section 9) and, as the reference, by the scan (the file moved aside);
          wall and CPU time of the opening process (CPU time: the machine may be
          shared), median of 3; then a fresh process's first lookup+gather of
          256 of its records (indexed unverified: checked at first use) against
          the same call repeated;
  segments: a directory of 1 / 100 / 1,000 / 10,000 segments of one record each
          (written by writers that are gone, as in a long-lived shared cache),
          read with RLIMIT_NOFILE at 64: open time, the cost of one miss (which
          triggers a refresh), its ratio to the 1-segment miss, the reader's extra
          descriptors, records served.
  Targets (issues 11 and 12): open <= 1 s, miss <= 5 ms growing linearly, extra
  fds <= 2 and every record served at 10,000 segments; first gather <= 2x warm
  (read against the floor's own first/warm: no reader that copies the records
  out of the page cache can have a lower ratio than the floor); open of 1M
  records <= 0.1 s.

Usage: python benchmarks/bench_store.py [DIR] [--segments-only | --open-only | --arena-only |
                                                   --first-only]
       (DIR: where to write, default /tmp)
"""

from __future__ import annotations

import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _machine import cpu_description, load_average

from torchcache_c._C import Store, parse_record


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
    block = src[4096:4096 + 256]
    dest = torch.empty(256, 768)
    one_dest = torch.empty(1, 768)
    m = best(lambda: dest.copy_(block), 300)
    for rows, idx in (("random", torch.randperm(n)[:256]),
                      ("stored together", torch.arange(4096, 4096 + 256))):
        k = keys(0, n)[idx].contiguous()
        store.lookup(k)
        one_key = k[:1].contiguous()
        g = best(lambda k=k: store.gather(k, dest), 300)
        assert torch.equal(dest, src[idx])
        r = best(lambda idx=idx: torch.index_select(src, 0, idx, out=dest), 300)
        f = best(lambda one_key=one_key: store.gather(one_key, one_dest), 300)
        print(f"gather [{label}, {rows}] 256 hits {g * 1e6:7.1f} us   memcpy {m * 1e6:6.1f} us"
              f"   index_select {r * 1e6:6.1f} us   x memcpy {g / m:5.2f}   "
              f"x index_select {g / r:5.2f}   fixed cost (1 hit) {f * 1e6:5.1f} us")


FIRST_GATHER_CHILD = """
import sys, time, torch
from torchcache_c._C import Store
torch.set_num_threads(1)
path = sys.argv[1]
def batch(seed):
    ids = torch.randperm(16384, generator=torch.Generator().manual_seed(seed))[:256]
    return torch.stack([ids, ids * 3 + 1], 1).contiguous()
def call(k):
    a = time.perf_counter(); p = s.lookup(k); g = s.gather(k, dest)
    t = time.perf_counter() - a
    assert bytes(p) == bytes(g) == b"\\x01" * 256
    return t
first_call, first_touch = batch(int(sys.argv[2])), batch(1000 + int(sys.argv[2]))
dest = torch.zeros(256, 768)
a = time.perf_counter(); s = Store(path); o = time.perf_counter() - a
# The binding's first calls, with a key the store does not hold (no record is
# read, no table slot of the batch is touched): torch's first __dlpack__ in a
# process runs Python code (~0.15 ms) that is not the store's.
absent = torch.tensor([[-1, -1]])
a = time.perf_counter(); s.lookup(absent); s.gather(absent, dest[:1]); b = time.perf_counter() - a
f = call(first_call)    # the store's first lookup+gather in this process
t = call(first_touch)   # records touched for the first time, by a later call
w = min(call(first_touch) for _ in range(100))
# An epoch's steady state, the other reference: every call reads 256 records it
# did not read in the last 63 calls (64 batches cover the 16,384 records, 50 MB,
# more than the L3), each for the third time in this process; the median call.
perm = torch.randperm(16384, generator=torch.Generator().manual_seed(2000 + int(sys.argv[2])))
epoch = [torch.stack([perm[i:i + 256], perm[i:i + 256] * 3 + 1], 1).contiguous()
         for i in range(0, 16384, 256)]
for k in epoch * 2:
    call(k)
e = sorted(call(k) for k in epoch)[len(epoch) // 2]
print(o, f, t, w, b, e)
"""

# The same through the decorator's path (csrc/call.c, _C.call_fetch): a lookup that
# leaves records unverified, and a gather that verifies each in the output at its
# first use, so a fresh process reads a record once.  The leaf constant is zero, so
# the stored keys are the leaf keys; the outputs are allocated by the call (the
# first call's buffer is new memory, later calls reuse it, as a training loop does).
FIRST_FETCH_CHILD = """
import sys, time, torch
from torchcache_c._C import Store, call_fetch
torch.set_num_threads(1)
Z = b"\\0" * 16
def batch(seed):
    ids = torch.randperm(16384, generator=torch.Generator().manual_seed(seed))[:256]
    return torch.stack([ids, ids * 3 + 1], 1).contiguous().numpy().tobytes()
def call(k):
    a = time.perf_counter(); r = call_fetch(s, k, Z, Z, 0, 1); t = time.perf_counter() - a
    assert r[1] == 256
    return t
first_call, first_touch = batch(int(sys.argv[2])), batch(1000 + int(sys.argv[2]))
s = Store(sys.argv[1])
a = time.perf_counter(); call_fetch(s, b"\\xff" * 16, Z, Z, 0, 1); b = time.perf_counter() - a
f = call(first_call)
t = call(first_touch)
w = min(call(first_touch) for _ in range(100))
print(f, t, w, b)
"""


def evict(path: str) -> None:
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def build_pread_floor() -> str | None:
    """Compiles pread_floor.c next to nothing of ours (a temporary directory); None
    (and a line saying why) where there is no C compiler."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pread_floor.c")
    exe = os.path.join(tempfile.mkdtemp(), "pread_floor")
    if cc is not None:
        out = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True)
        if out.returncode == 0:
            return exe
        print(f"pread floor: {cc} could not build {src}:\n{out.stderr}")
    else:
        print("pread floor: skipped (no C compiler: set CC)")
    return None


def record_places(segment: str) -> dict:
    """{key0: (offset, length)} of every record in the segment, by walking it."""
    name = os.path.basename(segment)
    with open(segment, "rb") as f:
        buf = f.read()
    at, pos = {}, 0
    while pos < len(buf):
        k0, _, _, _, length, _ = parse_record(buf, name, pos, pos, payload=False)
        at[k0] = (pos, length)
        pos += length
    return at


def floor_places(at: dict, seed: int) -> str:
    """pread_floor's input: the places (record_places' `at`) of the records that
    FIRST_GATHER_CHILD's two batches (seeds seed and 1000 + seed) read."""
    lines = []
    for s in (seed, 1000 + seed):
        ids = torch.randperm(16384, generator=torch.Generator().manual_seed(s))[:256]
        lines.append(str(len(ids)))
        lines += [f"{at[i][0]} {at[i][1]}" for i in ids.tolist()]
    return "\n".join(lines) + "\n"


def bench_first_gather(root: str) -> None:
    d = tempfile.mkdtemp(dir=root)
    with Store(d) as w:
        w.put(keys(0, 16384), torch.randn(16384, 768))
    floor_exe = build_pread_floor()
    (segment,) = [os.path.join(d, n) for n in os.listdir(d) if n.startswith("seg-")]
    # Walked once, here: reading the file after an eviction would put its pages back.
    places = record_places(segment) if floor_exe is not None else {}
    for label in ("page cache warm", "pages evicted"):
        runs, calls = [], []
        floors: dict = {"preadv": [], "mmap": []}
        for seed in range(5):
            for way, extra in (("preadv", []), ("mmap", ["mmap"])):
                if floor_exe is None:
                    break
                if label == "pages evicted":
                    evict(d)
                out = subprocess.run([floor_exe, segment, *extra], input=floor_places(places, seed),
                                     check=True, capture_output=True, text=True).stdout
                floors[way].append([float(x) for x in out.split()])
            if label == "pages evicted":
                evict(d)
            out = subprocess.run([sys.executable, "-c", FIRST_GATHER_CHILD, d, str(seed)],
                                 check=True, capture_output=True, text=True).stdout
            runs.append([float(x) for x in out.split()])
            if label == "pages evicted":
                evict(d)
            out = subprocess.run([sys.executable, "-c", FIRST_FETCH_CHILD, d, str(seed)],
                                 check=True, capture_output=True, text=True).stdout
            calls.append([float(x) for x in out.split()])
        o, f, t, w, b, e = (sorted(r[i] for r in runs)[len(runs) // 2] for i in range(6))
        cf, ct, cw, cb = (sorted(r[i] for r in calls)[len(calls) // 2] for i in range(4))
        print(f"fresh process [{label}] open {o * 1e3:6.1f} ms   binding's first calls (a "
              f"key not held; torch's first __dlpack__) {b * 1e6:6.1f} us   store's first "
              f"lookup+gather 256x3 KB: first call {f * 1e6:7.1f} us, first touch of other "
              f"records {t * 1e6:7.1f} us, warm {w * 1e6:6.1f} us   first/warm {f / w:5.2f}   "
              f"first touch/warm {t / w:5.2f}   first/first touch {f / t:5.2f}   (first call + "
              f"binding's)/warm {(f + b) / w:5.2f}   epoch steady state {e * 1e6:6.1f} us, "
              f"first/epoch {f / e:5.2f}, epoch/warm {e / w:5.2f} "
              f"(median of {len(runs)} processes)")
        print(f"fresh process [{label}] call path (call_fetch, 256 x 3 KB): first call "
              f"{cf * 1e6:7.1f} us, first touch of other records {ct * 1e6:7.1f} us, warm "
              f"{cw * 1e6:6.1f} us   first/warm {cf / cw:5.2f}   first touch/warm "
              f"{ct / cw:5.2f}   (binding's first call, a key not held: {cb * 1e6:6.1f} us; "
              f"median of {len(calls)} processes)")
        for way, rows in floors.items():
            if not rows:
                continue
            pf, pt, pw = (sorted(r[i] for r in rows)[len(rows) // 2] for i in range(3))
            what = ("the floor" if way == "preadv" else
                    "a memcpy out of a populated mapping, which the store does not do: SIGBUS")
            print(f"fresh process [{label}] {way} (C, the same records, no store: "
                  f"pread_floor.c; {what}): first call {pf * 1e6:7.1f} us, first touch of other "
                  f"records {pt * 1e6:7.1f} us, warm {pw * 1e6:6.1f} us   first/warm "
                  f"{pf / pw:5.2f}   first touch/warm {pt / pw:5.2f}   store / this: first call "
                  f"{f / pf:5.2f}, first touch {t / pt:5.2f}, warm {w / pw:5.2f} (median of "
                  f"{len(rows)} processes)")


def bench_own_first_use(root: str) -> None:
    """A persistent cache's second epoch in the process that wrote the first: its own
    records are verified at their first use, through the decorator's path
    (call_fetch), then read again verified; 16 batches of 256 x 3 KB."""
    from torchcache_c._C import call_fetch

    zero = b"\0" * 16
    firsts, seconds = [], []
    for _ in range(5):
        s = Store(tempfile.mkdtemp(dir=root))
        ids = torch.arange(4096)
        k = torch.stack([ids, ids * 3 + 1], 1).contiguous()
        vals = torch.randn(4096, 768)
        for i in range(0, 4096, 256):
            s.put(k[i:i + 256], vals[i:i + 256])
        batches = [k[i:i + 256].numpy().tobytes() for i in range(0, 4096, 256)]
        for out in (firsts, seconds):
            a = time.perf_counter()
            for b in batches:
                assert call_fetch(s, b, zero, zero, 0, 1)[1] == 256
            out.append(time.perf_counter() - a)
        s.close()
    f, w = statistics.median(firsts), statistics.median(seconds)
    print(f"own records, first use in the writing process (call path, 16 x 256 x 3 KB): "
          f"first pass {f * 1e3:6.2f} ms, second {w * 1e3:6.2f} ms, first/second {f / w:5.2f} "
          f"(median of 5)")


def bench_put_batches(root: str) -> None:
    calls, batch = 64, 256
    src = torch.randn(calls, batch, 768)
    raw = [src[i].numpy().tobytes() for i in range(calls)]
    d = tempfile.mkdtemp(dir=root)
    fd = os.open(os.path.join(d, "reference"), os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    a = time.perf_counter()
    for b in raw:
        os.write(fd, b)
    w = time.perf_counter() - a
    os.close(fd)
    d = tempfile.mkdtemp(dir=root)
    store = Store(d)
    ks = keys(0, calls * batch)
    a = time.perf_counter()
    for i in range(calls):
        store.put(ks[i * batch:(i + 1) * batch], src[i])
    p = time.perf_counter() - a
    store.close()
    print(f"put 256 x 3 KB per call: {p / calls * 1e6:7.1f} us per call "
          f"({p / (calls * batch) * 1e9:5.0f} ns per record)   os.write of the same bytes "
          f"{w / calls * 1e6:7.1f} us   ratio {w / p:.2f}")


ARENA_RECORD = 3200  # a 3 KB item's record in the arena: 128-byte header, 3,072 bytes


def fresh_rows(n: int, huge: bool) -> torch.Tensor:
    """n rows of ARENA_RECORD bytes of memory never touched, as float32 rows (the
    tensor keeps the anonymous mapping alive)."""
    # private, as the arena's chunks (a shared anonymous mapping is shmem, which
    # gets no huge pages under the usual shmem_enabled=never)
    m = mmap.mmap(-1, n * ARENA_RECORD, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(m, dtype=torch.float32).view(n, ARENA_RECORD // 4)


def bench_arena_put() -> None:
    n, per, windows = 100_000, 1000, ((0, 10_000), (40_000, 50_000), (90_000, 100_000))
    src = torch.randn(per, 768)
    ks = torch.stack([torch.arange(n), torch.arange(n) * 5 + 2], 1).contiguous()

    def per_call(write) -> list:
        times = []
        for i in range(0, n, per):
            a = time.perf_counter()
            write(i)
            times.append(time.perf_counter() - a)
        return times

    # Every mapping stays until the end: memory one of them freed would be
    # handed to the next, already backed (on a VM that gives freed memory back
    # to its host, the next would then look much cheaper than fresh memory).
    rows, held = {}, []
    held.append(fresh_rows(n, True))
    rows["copy into fresh, huge pages"] = per_call(
        lambda i: held[0][i:i + per, :768].copy_(src))
    store = Store(None)
    rows["arena put"] = per_call(lambda i: store.put(ks[i:i + per], src))
    assert store.stats()["records"] == n
    held.append(fresh_rows(n, False))
    rows["copy into fresh, 4 KiB pages"] = per_call(
        lambda i: held[1][i:i + per, :768].copy_(src))
    held.append(fresh_rows(n, True))
    held[2].zero_()
    rows["copy into faulted memory"] = per_call(lambda i: held[2][i:i + per, :768].copy_(src))
    store.close()

    def at(times, lo, hi):
        return sum(times[lo // per:hi // per]) / (hi - lo)

    ref = rows["copy into faulted memory"]
    fresh = rows["copy into fresh, huge pages"]
    for label, times in rows.items():
        cells = "   ".join(f"{lo // 1000}-{hi // 1000}k {at(times, lo, hi) * 1e6:5.2f} us"
                           for lo, hi in windows)
        print(f"{label:<29} per 3 KB record: {cells}")
    for lo, hi in windows:
        print(f"arena put {lo // 1000}-{hi // 1000}k records: x copy into faulted memory "
              f"{at(rows['arena put'], lo, hi) / at(ref, lo, hi):5.2f}   x copy into fresh "
              f"memory (huge pages) {at(rows['arena put'], lo, hi) / at(fresh, lo, hi):5.2f}")


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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        segments_at_64_fds(root)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def segments_at_64_fds(root: str) -> None:
    base_miss = None
    for count in (1, 100, 1000, 10000):
        d = segment_dir(root, count)
        # A long-lived cache's directory: its last change is older than the store's
        # coarse-timestamp slack (50 ms), so a refresh trusts the directory's mtime.
        time.sleep(0.1)
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


def main(root: str, segments_only: bool, open_only: bool = False,
         arena_only: bool = False) -> None:
    torch.set_num_threads(1)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; 1 thread; "
          f"load average {load_average()}")
    if arena_only:
        bench_arena_put()
        return
    if open_only:
        bench_open_million(root)
        return
    bench_segments(root)
    if segments_only:
        return
    n = 16384
    src = torch.randn(n, 768)
    for where in (None, tempfile.mkdtemp(dir=root)):
        bench_gather(Store(where), src, "memory" if where is None else "dir")
    bench_first_gather(root)
    bench_own_first_use(root)
    bench_put_batches(root)
    bench_arena_put()

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

    bench_open_million(root)


OPEN_CHILD = """
import sys, time, torch
from torchcache_c._C import Store
torch.set_num_threads(1)
a, c = time.perf_counter(), time.process_time()
s = Store(sys.argv[1])
o, oc = time.perf_counter() - a, time.process_time() - c
n = s.stats()["records"]
ids = torch.randperm(1_000_000, generator=torch.Generator().manual_seed(int(sys.argv[2])))[:256]
k = torch.stack([ids, ids * 3 + 1], 1).contiguous()
dest = torch.zeros(256, 16)
def call():
    a = time.perf_counter(); p = s.lookup(k); g = s.gather(k, dest)
    t = time.perf_counter() - a
    assert bytes(p) == bytes(g) == b"\\x01" * 256
    return t
f = call()
w = min(call() for _ in range(100))
print(o, oc, n, f, w)
"""


def bench_open_million(root: str) -> None:
    d = tempfile.mkdtemp(dir=root)
    with Store(d) as store:
        for i in range(0, 1_000_000, 100_000):
            store.put(keys(i, 100_000), torch.randn(100_000, 16))
    (index,) = [n for n in os.listdir(d) if n.startswith("idx-")]
    aside = os.path.join(root, index + ".aside")
    results = {}
    for label in ("index file", "scan"):
        if label == "scan":
            os.rename(os.path.join(d, index), aside)
        runs = []
        for seed in range(3):
            out = subprocess.run([sys.executable, "-c", OPEN_CHILD, d, str(seed)], check=True,
                                 capture_output=True, text=True).stdout
            runs.append([float(x) for x in out.split()])
            # this process wrote the segment and still runs: a reader never
            # replaces its index, so every scan run scans
            assert (label == "scan") == (index not in os.listdir(d))
        results[label] = [sorted(r[i] for r in runs)[1] for i in range(5)]
    os.rename(aside, os.path.join(d, index))
    for label, (o, oc, n, f, w) in results.items():
        print(f"open of {int(n)} records [{label}]: {o:.3f} s (CPU {oc:.3f} s)   fresh process's "
              f"first lookup+gather of 256 x 64 B {f * 1e6:7.1f} us, warm {w * 1e6:6.1f} us, "
              f"first/warm {f / w:5.2f} (median of 3 processes)")
    ix, sc = results["index file"], results["scan"]
    print(f"open with the index file / by the scan: {ix[0] / sc[0]:.3f} (CPU {ix[1] / sc[1]:.3f})")


if __name__ == "__main__":
    flags = ("--segments-only", "--open-only", "--arena-only", "--first-only")
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    args = [a for a in sys.argv[1:] if a not in flags]
    unknown = [a for a in args if a.startswith("-")]
    if unknown or len(args) > 1:
        sys.exit(f"bench_store.py: unexpected arguments {unknown or args[1:]}; "
                 f"usage: python benchmarks/bench_store.py [DIR] [{' | '.join(flags)}]")
    if args and not os.path.isdir(args[0]):
        sys.exit(f"bench_store.py: {args[0]!r} is not a directory (DIR: where to write)")
    if "--first-only" in sys.argv:
        torch.set_num_threads(1)
        print(f"load average {load_average()}")
        bench_first_gather(args[0] if args else "/tmp")
        bench_own_first_use(args[0] if args else "/tmp")
    else:
        main(args[0] if args else "/tmp", "--segments-only" in sys.argv,
             "--open-only" in sys.argv, "--arena-only" in sys.argv)
