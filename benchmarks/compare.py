"""No cache vs torchcache 0.4.1 and 0.6.0 vs torchcache_c, on the same workloads, in one run.

    pip install -e ".[bench]"       # zstd, matplotlib
    python benchmarks/compare.py    # writes benchmarks/results/compare.{json,png}
    python benchmarks/compare.py --python 0.4.1=/path/bin/python   # a venv of your own

Each torchcache release runs in its own venv and process (benchmarks/out/
venv-torchcache-X, made on first use with this process's torch version, as
bench_call.py does; or given by --python); torchcache_c and the uncached module run in
this process.

Workload "backbone": a frozen patch-embedding backbone maps (B, 3, 224, 224) float32
images to (B, 768) features; 8 batches of 256 items an epoch.
Workload "vit": a small ViT-style encoder built from torch.nn feeds a linear head
that trains for several epochs (forward of the encoder cached, head trained).

Per system, each the median of several epochs:
  miss epoch      the first epoch over an empty cache (everything computed and stored)
  memory-hit      later epochs in the same process
  disk-hit warm   the first epoch of a fresh process over the same directory, its files
                  just written (in the page cache)
  disk-hit cold   the same after every file of the directory was fsynced and evicted
                  from the page cache (posix_fadvise POSIX_FADV_DONTNEED)
plus bytes on disk per item, and whether every output equals the uncached module's.
The uncached epoch is measured on its own, before torchcache_c; since the forward's
time drifts on a shared machine (3.3-4.4 s in one hour on the 2026-11-29 VM), an
uncached epoch also runs beside each of torchcache_c's miss epochs (alternately before
and after it), and each miss epoch / its neighbour is printed as well.
The floor: x.sum() over every batch of the epoch + index_select of its 256 output rows
from a preloaded (items, 768) table: reading the inputs once and copying the outputs
once, the least any cache of these features can do per epoch (the inputs are in RAM,
so a hit epoch is mostly hashing them).  A floor epoch runs after each of torchcache_c's
memory-hit epochs, so that their ratio sees the same machine load; with it, an epoch of
torchcache_c.hash_tensor alone and one of x.sum() alone over the same batches (same
thread count), which say how much of memory-hit / floor is the hash kernel's speed
against a plain read (the rest is the call around it: lookup, gather, Python).
Where a memory-hit call's time went (2026-11-27, perf record -g of hit epochs only, 2
threads, this AMD EPYC, load ~2.5): 95% of its CPU samples in the hash kernel
(stripes_avx2 90%, finish_avx2 3%, the block loop 2%), the gather's memcpy 0.7%, Python
0.7%, page faults of the output buffers under 0.5%, no garbage collection (gc
callbacks: 0 over 160 calls).  So memory-hit / floor is, to within the noise,
hash_only / sum_only: the AVX2 stripe loop is bound by its arithmetic (in cache 12-21
GB/s on one core against x.sum()'s 27-52; about 12 vector uops per 32 input bytes, 117
instructions per 256-byte stripe of which 25 spill accumulators to the stack, since
16 accumulators fill every ymm register), where x.sum() is bound by memory.
Then a correctness table run on both libraries (collisions among 10,000 random items,
a change outside the strided sample, int token ids in / float embeddings out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _machine import cpu_description
from torch import nn

RELEASES = ("0.4.1", "0.6.0")


# --------------------------------------------------------------------------- models
class Backbone(nn.Module):
    """ViT-B/16's patch embedding + GELU + mean pool + LayerNorm: (B, 3, 224, 224) -> (B, 768).

    About 0.23 GFLOP per image: 1/75 of a full ViT-B/16, so the cache's own costs stay
    visible next to the forward pass; a real backbone only makes every cache look better.
    """

    def __init__(self, dim: int = 768):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, kernel_size=16, stride=16)
        self.norm = nn.LayerNorm(dim)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        return self.norm(nn.functional.gelu(self.patch(x)).flatten(2).mean(-1))


class TinyViT(nn.Module):
    """Patch embedding + 2 transformer layers + mean pool: (B, 3, 64, 64) -> (B, 192)."""

    def __init__(self, dim: int = 192):
        super().__init__()
        torch.manual_seed(1)
        self.patch = nn.Conv2d(3, dim, kernel_size=8, stride=8)
        self.pos = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, dim * 4, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.encoder(tokens).mean(1)


class Embedder(nn.Module):
    """int64 token ids (B, 16) -> float embeddings (B, 64)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(1000, 64)
        self.requires_grad_(False)

    def forward(self, ids):
        return self.emb(ids).mean(1)


class Projector(nn.Module):
    """(B, D) float -> (B, 8): a frozen linear map, for the collision test."""

    def __init__(self, d: int):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(d, 8)
        self.requires_grad_(False)

    def forward(self, x):
        return self.lin(x)


def build(model_cls, system: str, cache_dir: str | None, **kwargs):
    """An instance of model_cls, wrapped by `system`'s decorator (persistent in cache_dir)."""
    if system == "none":
        return model_cls(**kwargs)
    opts = dict(persistent=cache_dir is not None, persistent_cache_dir=cache_dir)
    if system == "torchcache":
        from torchcache import torchcache
    else:
        from torchcache_c import torchcache
    cls = type(model_cls.__name__, (model_cls,), {"__module__": __name__})
    return torchcache(**opts)(cls)(**kwargs)


# --------------------------------------------------------------------------- data
def backbone_batches(n_batches: int, batch_size: int):
    g = torch.Generator().manual_seed(10)
    return [torch.rand(batch_size, 3, 224, 224, generator=g) for _ in range(n_batches)]


def vit_data(n_items: int):
    g = torch.Generator().manual_seed(11)
    x = torch.rand(n_items, 3, 64, 64, generator=g)
    y = torch.randint(0, 10, (n_items,), generator=g)
    return x, y


# --------------------------------------------------------------------------- timing
def run_epoch(model, batches):
    t0 = time.perf_counter()
    with torch.no_grad():
        outs = [model(b) for b in batches]
    return time.perf_counter() - t0, outs


def train_epoch(model, head, opt, x, y, batch_size):
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        with torch.no_grad():
            feats = model(x[i:i + batch_size])
        loss = nn.functional.cross_entropy(head(feats), y[i:i + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def worker_disk_hit(args) -> None:
    """Fresh process: one epoch over an existing cache directory; prints JSON."""
    torch.set_num_threads(args.threads)
    batches = backbone_batches(args.batches, args.batch_size)
    model = build(Backbone, args.system, args.dir)
    seconds, outs = run_epoch(model, batches)
    reference = Backbone()
    with torch.no_grad():
        equal = all(torch.equal(o, reference(b)) for o, b in zip(outs, batches))
    print(json.dumps({"seconds": seconds, "equal": equal}))


def measure_backbone(system: str, args, root: Path, reference, floor=None,
                     beside: bool = False) -> dict:
    """floor: an epoch of the read floor, run after each memory-hit epoch (the two
    interleaved, so that their ratio sees the same machine load).  beside: an uncached
    epoch next to each miss epoch (before it in odd trials, after it in even ones), so
    that miss / uncached is also a ratio of epochs run in the same minute."""
    batches = backbone_batches(args.batches, args.batch_size)
    items = args.batches * args.batch_size
    result: dict = {}
    if system == "none":
        model = build(Backbone, "none", None)
        result["uncached"] = statistics.median(
            run_epoch(model, batches)[0] for _ in range(args.epochs))
        return result
    misses, hits, equal = [], [], True
    floors: dict = {}
    beside_ratios = []
    plain = build(Backbone, "none", None) if beside else None
    cache_dir = None
    for trial in range(args.miss_trials):
        cache_dir = root / f"{system}-{trial}"
        model = build(Backbone, system, str(cache_dir))
        before = run_epoch(plain, batches)[0] if plain is not None and trial % 2 else None
        seconds, outs = run_epoch(model, batches)
        misses.append(seconds)
        if plain is not None:
            uncached = before if before is not None else run_epoch(plain, batches)[0]
            beside_ratios.append(seconds / uncached)
        equal &= all(torch.equal(o, r) for o, r in zip(outs, reference))
        if trial == args.miss_trials - 1:
            for _ in range(args.epochs):
                seconds, outs = run_epoch(model, batches)
                hits.append(seconds)
                if floor is not None:
                    for name, seconds in floor(batches).items():
                        floors.setdefault(name, []).append(seconds)
                equal &= all(torch.equal(o, r) for o, r in zip(outs, reference))
        del model
    disk: dict = {"warm": [], "cold": []}
    for _ in range(args.disk_trials):
        for kind in ("warm", "cold"):
            if kind == "cold":
                evict(cache_dir)
            out = subprocess.run(
                [sys.executable, __file__, "--worker", "disk-hit", "--system", system,
                 "--dir", str(cache_dir), "--batches", str(args.batches),
                 "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            disk[kind].append(rec["seconds"])
            equal &= rec["equal"]
    result.update(miss=statistics.median(misses), memory_hit=statistics.median(hits),
                  disk_hit=statistics.median(disk["warm"]),
                  disk_hit_cold=statistics.median(disk["cold"]),
                  bytes_per_item=dir_bytes(cache_dir) / items, outputs_equal=equal)
    if floors:
        result["floor"] = {name: statistics.median(v) for name, v in floors.items()}
    if beside_ratios:
        result["miss_over_uncached_beside"] = beside_ratios
    return result


def evict(path: Path) -> None:
    """Write back and drop from the page cache every file under path (a cold read)."""
    for p in path.rglob("*"):
        if not p.is_file():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def floor_epoch(args, reference):
    """floor(batches): seconds of one epoch of the read floor ("floor": x.sum() of every
    batch and index_select of its output rows from a preloaded table of every output),
    then of one epoch of hash_tensor alone ("hash_only") and of x.sum() alone
    ("sum_only") over the same batches: where memory-hit / floor goes."""
    from torchcache_c import hash_tensor

    table = torch.cat(reference)
    rows = [torch.arange(i * args.batch_size, (i + 1) * args.batch_size)
            for i in range(len(reference))]

    def timed(step, batches) -> float:
        t0 = time.perf_counter()
        for b, r in zip(batches, rows):
            step(b, r)
        return time.perf_counter() - t0

    def read(b, r):
        b.sum()
        table.index_select(0, r)

    def epoch(batches) -> dict:
        return {"floor": timed(read, batches),
                "hash_only": timed(lambda b, r: hash_tensor(b), batches),
                "sum_only": timed(lambda b, r: b.sum(), batches)}

    return epoch


def measure_vit(system: str, args, root: Path) -> dict:
    x, y = vit_data(args.vit_items)
    model = build(TinyViT, system, str(root / f"vit-{system}") if system != "none" else None)
    torch.manual_seed(5)
    head = nn.Linear(192, 10)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    times = [train_epoch(model, head, opt, x, y, args.batch_size) for _ in range(args.vit_epochs)]
    return {"first_epoch": times[0], "later_epochs": statistics.median(times[1:]),
            "total": sum(times)}


# --------------------------------------------------------------------------- correctness
def correctness(system: str, root: Path) -> dict:
    """Wrong outputs of each library on three known failure modes of torchcache 0.4.1."""
    # 1. 10,000 distinct random items through a cached frozen projection.
    g = torch.Generator().manual_seed(20)
    items = torch.randn(10_000, 256, generator=g)
    model = build(Projector, system, None, d=256)
    ref = Projector(256)
    wrong_random = 0
    with torch.no_grad():
        for _ in range(2):  # the second pass reads every item back from the cache
            for i in range(0, 10_000, 500):
                out = model(items[i:i + 500])
                wrong_random += int((out != ref(items[i:i + 500])).any(dim=1).sum())
    # 2. A change outside torchcache's strided sample (an image, default subsample).
    img = torch.rand(1, 3, 224, 224, generator=g)
    changed = img.clone()
    changed.view(-1)[1] += 1.0  # index 1 is not a multiple of the stride 15
    bb = build(Backbone, system, None)
    ref_bb = Backbone()
    with torch.no_grad():
        bb(img)
        wrong_sample = int(not torch.equal(bb(changed), ref_bb(changed)))
    # 3. int token ids in, float embeddings out, served from the cache.
    ids = torch.randint(0, 1000, (64, 16), generator=g)
    emb = build(Embedder, system, None)
    ref_emb = Embedder()
    with torch.no_grad():
        emb(ids)
        served = emb(ids)
        wrong_tokens = int((served != ref_emb(ids)).any(dim=1).sum())
        token_dtype = str(served.dtype)
    return {"random_items_wrong": wrong_random, "random_items_total": 20_000,
            "outside_sample_wrong": wrong_sample, "token_rows_wrong": wrong_tokens,
            "token_rows_total": 64, "token_output_dtype": token_dtype}


# --------------------------------------------------------------------------- report
def machine() -> str:
    return (f"{cpu_description()}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def chart(results: dict, path: Path) -> None:
    """Bar chart of the epoch kinds for every library (log scale)."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no {path.name} (pip install matplotlib)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bb = results["backbone"]
    labels = ["miss epoch", "memory-hit epoch", "disk-hit warm", "disk-hit cold"]
    keys = ["miss", "memory_hit", "disk_hit", "disk_hit_cold"]
    systems = [s for s in results["systems"] if s != "none"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
        vals = [bb[system][key] for key in keys]
        pos = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(keys))]
        bars = ax.bar(pos, vals, width, label=system)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.axhline(bb["none"]["uncached"], color="gray", ls="--", label="uncached epoch")
    ax.axhline(bb["floor"]["floor"], color="black", ls=":", label="floor (read + copy)")
    ax.set_xticks(range(len(keys)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per epoch (log)")
    ax.set_title(f"2048 items (B,3,224,224)->(B,768), {results['date']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure_system(system: str, args, root: Path, reference, floor=None) -> dict:
    """Backbone, vit and correctness of one system in this process."""
    print(f"{system}: backbone ...", flush=True)
    out = {"backbone": measure_backbone(system, args, root, reference, floor,
                                        beside=system == "torchcache_c")}
    print(f"{system}: vit ...", flush=True)
    out["vit"] = measure_vit(system, args, root)
    if system != "none":
        print(f"{system}: correctness ...", flush=True)
        out["correctness"] = correctness(system, root)
    return out


def worker_system(args) -> None:
    """A torchcache release's whole measurement in its own venv; prints JSON."""
    from importlib.metadata import version

    torch.set_num_threads(args.threads)
    batches = backbone_batches(args.batches, args.batch_size)
    ref_model = Backbone()
    with torch.no_grad():
        reference = [ref_model(b) for b in batches]
    with tempfile.TemporaryDirectory(prefix="tc-compare-") as tmp:
        out = measure_system("torchcache", args, Path(tmp), reference)
    out["version"] = version("torchcache")
    print(json.dumps(out))


def run_release(release: str, python: Path, args) -> dict:
    print(f"torchcache {release}: backbone, vit, correctness in {python} ...", flush=True)
    cmd = [str(python), __file__, "--worker", "system"]
    for name in ("batches", "batch_size", "epochs", "miss_trials", "disk_trials", "vit_items",
                 "vit_epochs", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"torchcache {release} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=5, help="memory-hit / uncached epochs")
    ap.add_argument("--miss-trials", type=int, default=3)
    ap.add_argument("--disk-trials", type=int, default=3)
    ap.add_argument("--vit-items", type=int, default=2048)
    ap.add_argument("--vit-epochs", type=int, default=4,
                    help="at least 2: the first epoch fills the cache, later ones hit it")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--releases", default=",".join(RELEASES),
                    help="torchcache releases to compare with, comma-separated, or 'none'")
    ap.add_argument("--python", action="append", default=[], metavar="RELEASE=PATH",
                    help="the interpreter of a venv that has torchcache==RELEASE")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--worker", choices=["disk-hit", "system"], help=argparse.SUPPRESS)
    ap.add_argument("--system", choices=("none", "torchcache", "torchcache_c"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vit_epochs < 2 or args.epochs < 1:
        ap.error("--vit-epochs must be at least 2 (the first fills the cache, the median is "
                 "over the later ones) and --epochs at least 1")
    if args.worker == "disk-hit":
        worker_disk_hit(args)
        return
    if args.worker == "system":
        worker_system(args)
        return
    from bench_call import release_python  # benchmarks/: this script's directory

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    releases = [] if args.releases == "none" else args.releases.split(",")
    given = dict(p.split("=", 1) for p in args.python)
    results = {"date": date.today().isoformat(), "machine": machine(),
               "command": "python benchmarks/compare.py " + " ".join(sys.argv[1:]),
               "threads": args.threads, "load_average": os.getloadavg(), "backbone": {},
               "vit": {}, "correctness": {}}
    runs = {}
    for release in releases:
        runs[f"torchcache {release}"] = run_release(release, release_python(release, given),
                                                    args)
    with tempfile.TemporaryDirectory(prefix="tc-compare-") as tmp:
        root = Path(tmp)
        ref_model = Backbone()
        with torch.no_grad():
            reference = [ref_model(b) for b in backbone_batches(args.batches, args.batch_size)]
        runs["none"] = measure_system("none", args, root, reference)
        runs["torchcache_c"] = measure_system("torchcache_c", args, root, reference,
                                              floor_epoch(args, reference))
        results["backbone"]["floor"] = runs["torchcache_c"]["backbone"].pop("floor")
    for name, run in runs.items():
        for part in ("backbone", "vit", "correctness"):
            if part in run:
                results[part][name] = run[part]
    results["systems"] = ["none"] + [f"torchcache {r}" for r in releases] + ["torchcache_c"]
    (args.out / "compare.json").write_text(json.dumps(results, indent=1) + "\n")
    chart(results, args.out / "compare.png")
    report(results)


def report(results: dict) -> None:
    bb = results["backbone"]
    unc, floor = bb["none"]["uncached"], bb["floor"]["floor"]
    systems = [s for s in results["systems"] if s != "none"]
    ours = bb["torchcache_c"]
    print(f"\n{results['date']} | {results['machine']} | threads {results['threads']} | "
          f"load average {' '.join(f'{v:.2f}' for v in results['load_average'])}")
    print(f"backbone workload, seconds per epoch (median); uncached epoch {unc:.3f} s, "
          f"floor {floor:.3f} s (x.sum() of the inputs + index_select of the outputs)")
    print(f"{'':20s}" + "".join(f"{s:>18s}" for s in systems) + f"{'floor':>9s}")
    rows = [("miss", "miss epoch"), ("memory_hit", "memory-hit epoch"),
            ("disk_hit", "disk-hit warm"), ("disk_hit_cold", "disk-hit cold")]
    for key, label in rows:
        print(f"{label:20s}" + "".join(f"{bb[s][key]:18.3f}" for s in systems) +
              f"{floor:9.3f}")
    print(f"{'bytes/item on disk':20s}" +
          "".join(f"{bb[s]['bytes_per_item']:18.0f}" for s in systems))
    print(f"{'outputs == uncached':20s}" +
          "".join(f"{str(bb[s]['outputs_equal']):>18s}" for s in systems))
    print(f"miss epoch / uncached epoch: torchcache_c {ours['miss'] / unc:.2f} (target <= 1.1)")
    if "miss_over_uncached_beside" in ours:
        pairs = ours["miss_over_uncached_beside"]
        print(f"  each miss epoch / an uncached epoch run beside it: "
              f"{', '.join(f'{r:.2f}' for r in pairs)} (median {statistics.median(pairs):.2f})")
    print(f"memory-hit epoch / floor: torchcache_c {ours['memory_hit'] / floor:.2f} "
          f"(target <= 1.1); disk-hit warm / floor {ours['disk_hit'] / floor:.2f}, "
          f"cold / floor {ours['disk_hit_cold'] / floor:.2f}")
    parts = bb["floor"]
    if "hash_only" in parts:
        print(f"  where it goes: hash_tensor alone {parts['hash_only']:.3f} s, x.sum() alone "
              f"{parts['sum_only']:.3f} s per epoch (hash / sum "
              f"{parts['hash_only'] / parts['sum_only']:.2f}); the call around the hashing "
              f"{ours['memory_hit'] - parts['hash_only']:.3f} s against the floor's "
              f"index_select and loop {floor - parts['sum_only']:.3f} s")
    for s in systems:
        if s == "torchcache_c":
            continue
        print(f"torchcache_c vs {s}: memory-hit {bb[s]['memory_hit'] / ours['memory_hit']:.1f}x "
              f"faster, disk-hit warm {bb[s]['disk_hit'] / ours['disk_hit']:.1f}x, "
              f"cold {bb[s]['disk_hit_cold'] / ours['disk_hit_cold']:.1f}x, miss "
              f"{bb[s]['miss'] / ours['miss']:.2f}x")
    vit = results["vit"]
    print("\nvit workload (encoder cached, linear head trained), seconds")
    for system in results["systems"]:
        v = vit[system]
        print(f"  {system:18s} first epoch {v['first_epoch']:7.3f}  later epochs "
              f"{v['later_epochs']:7.3f}  total {v['total']:7.3f}")
    print("\ncorrectness (wrong outputs)")
    for system, c in results["correctness"].items():
        print(f"  {system:18s} random items {c['random_items_wrong']}/"
              f"{c['random_items_total']}, change outside sample "
              f"{c['outside_sample_wrong']}/1, token ids "
              f"{c['token_rows_wrong']}/{c['token_rows_total']} "
              f"(served as {c['token_output_dtype']})")


if __name__ == "__main__":
    main()
