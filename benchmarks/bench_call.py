"""Latency of one cached call, next to its references, measured in one run.

    python benchmarks/bench_call.py                  # makes/reuses the release venvs
    python benchmarks/bench_call.py --releases none  # torchcache_c only
    python benchmarks/bench_call.py --python 0.4.1=/path/bin/python --python 0.6.0=...

Module `x * 2` on (B, 768) float32 items, one thread, B in {1, 8, 32, 256}; memory and
persistent tiers; all-hit calls (the same batch again) and all-miss calls (a new batch
each call).  Each system runs in its own process: torchcache_c with this interpreter,
torchcache 0.4.1 and 0.6.0 each in its own venv (benchmarks/out/venv-torchcache-X,
made on first use with the same torch version, or given by --python).  Every figure
is a time per call; each system's calls are also given as ratios to its own
uncached call, and those ratios are what the releases are compared by.  Within a
process every quantity is measured once per round, the rounds interleaving them, and
the best round is reported (the machine may be shared: it is the least disturbed).

References measured in torchcache_c's process:
  uncached   the module itself
  floor      hash_tensor(x) + index_select of the B output rows from a preloaded table:
             what any cache of these outputs must at least do for an all-hit call
  miss ref   uncached forward + hash_tensor(x) + Store.put of the outputs (memory
             arena or directory store): what a miss must at least do
Targets (docs/architecture.md, issue 11): B=1 all-hit <= 6x uncached; B=256 all-hit
<= 1.3x floor; a miss <= 1.3x miss ref; cheaper than both releases at every B, both
tiers.  The machine is shared: compare ratios, not absolute figures, across runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import cpu_description, load_average
from torch import nn

SIZES = (1, 8, 32, 256)
TIERS = ("memory", "persistent")
RELEASES = ("0.4.1", "0.6.0")
FEATURES = 768
OUT = Path(__file__).resolve().parent / "out"


class Double(nn.Module):
    def forward(self, x):
        return x * 2


def build(system: str, tier: str, cache_dir: str):
    if system == "none":
        return Double().eval()
    if system == "torchcache_c":
        from torchcache_c import torchcache
    else:
        from torchcache import torchcache
    cls = type("Double", (Double,), {"__module__": __name__})
    opts = {"persistent": tier == "persistent", "persistent_cache_dir": cache_dir}
    return torchcache(**opts)(cls)().eval()


def loop(fn, batches) -> float:
    """Mean time (us) of fn(b) over batches."""
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - t0) / len(batches) * 1e6


def miss_loop(fn, batch: int, n: int, g: torch.Generator) -> float:
    """Mean time (us) of fn on n new batches (made before the clock starts)."""
    return loop(fn, fresh(batch, n, g))


def calls_for(batch: int) -> int:
    return max(20, min(1000, 20000 // (batch * 4)))


def fresh(batch: int, n: int, g: torch.Generator):
    return [torch.randn(batch, FEATURES, generator=g) for _ in range(n)]


def worker(args) -> None:
    """One system, both tiers, every B: prints one JSON line.  Every quantity of a row
    is measured once per round, the rounds interleaving them, and reported as its
    best round (the machine is shared: the best round is the least disturbed)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    plain = Double().eval()
    result = {"system": args.worker, "version": version_of(args.worker), "rows": []}
    ours = args.worker == "torchcache_c"
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="tc-bench-call-") as tmp:
        for tier in TIERS:
            for batch in SIZES:
                n = calls_for(batch)
                miss_n = max(10, n // 10)
                x = fresh(batch, 1, g)[0]
                model = build(args.worker, tier, str(Path(tmp) / f"{tier}-{batch}"))
                model(x)
                steps = {"uncached": functools.partial(loop, plain, [x] * n),
                         "hit": functools.partial(loop, model, [x] * n),
                         "miss": functools.partial(miss_loop, model, batch, miss_n, g)}
                if ours:
                    steps.update(references(tier, batch, n, miss_n, g, plain,
                                            Path(tmp) / f"ref-{tier}-{batch}"))
                rounds: dict = {k: [] for k in steps}
                for _ in range(args.rounds):
                    for k, step in steps.items():
                        rounds[k].append(step())
                row = {"tier": tier, "batch": batch}
                row.update({k: min(v) for k, v in rounds.items()})
                result["rows"].append(row)
                del model
    print(json.dumps(result))


def references(tier: str, batch: int, n: int, miss_n: int, g, plain, path: Path) -> dict:
    """The floor and the miss reference, as steps of the worker's rounds."""
    from torchcache_c import _C, hash_tensor

    table = torch.randn(4096, FEATURES, generator=g)
    idx = torch.randint(0, 4096, (batch,), generator=g)
    x = fresh(batch, 1, g)[0]

    def floor(b):
        hash_tensor(b)
        return table.index_select(0, idx)

    store = _C.Store(None if tier == "memory" else str(path))

    def miss_ref(b):
        out = plain(b)
        store.put(hash_tensor(b), out)
        return out

    return {"floor": functools.partial(loop, floor, [x] * n),
            "miss_ref": functools.partial(miss_loop, miss_ref, batch, miss_n, g)}


def version_of(system: str) -> str:
    if system == "none":
        return ""
    from importlib.metadata import version

    return version(system)


# --------------------------------------------------------------------------- driver
def release_python(release: str, given: dict) -> Path:
    """The interpreter of a venv with torchcache==release and this process's torch."""
    if release in given:
        return Path(given[release])
    venv = OUT / f"venv-torchcache-{release}"
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"making {venv} (torch {torch.__version__}, torchcache {release}) ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_version = torch.__version__.split("+")[0]
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={torch_version}",
                        f"torchcache=={release}"], check=True)
    return py


def run_worker(python: Path, system: str, rounds: int) -> dict:
    out = subprocess.run([str(python), __file__, "--worker", system, "--rounds", str(rounds)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{python} --worker {system} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--releases", default=",".join(RELEASES),
                    help="torchcache releases to compare with, comma-separated, or 'none'")
    ap.add_argument("--python", action="append", default=[], metavar="RELEASE=PATH",
                    help="the interpreter of a venv that has torchcache==RELEASE")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    given = dict(p.split("=", 1) for p in args.python)
    releases = [] if args.releases == "none" else args.releases.split(",")
    results = {"torchcache_c": run_worker(Path(sys.executable), "torchcache_c", args.rounds)}
    for release in releases:
        results[release] = run_worker(release_python(release, given), "torchcache",
                                      args.rounds)
    report(results, releases, args)


def report(results: dict, releases, args) -> None:
    print(f"\nCPU: {cpu_description()}; torch {torch.__version__}, "
          f"Python {platform.python_version()}; 1 thread; load average {load_average()}")
    print("command: python benchmarks/bench_call.py " + " ".join(sys.argv[1:]))
    ours = results["torchcache_c"]["rows"]
    names = [f"tc {results[r]['version']}" for r in releases]
    head = (f"{'tier':10s}{'B':>4s}{'uncached':>10s}{'hit':>9s}{'floor':>9s}{'miss':>9s}"
            f"{'miss ref':>10s}{'hit/unc':>9s}{'hit/floor':>10s}{'miss/ref':>9s}")
    for name in names:
        head += f"{name + ' hit/unc':>17s}{'miss/unc':>9s}"
    print(f"\nus per call (best of {args.rounds} rounds); ratios measured in this run")
    print(head)
    verdicts = []
    for i, row in enumerate(ours):
        line = (f"{row['tier']:10s}{row['batch']:4d}{row['uncached']:10.1f}{row['hit']:9.1f}"
                f"{row['floor']:9.1f}{row['miss']:9.1f}{row['miss_ref']:10.1f}"
                f"{row['hit'] / row['uncached']:9.2f}{row['hit'] / row['floor']:10.2f}"
                f"{row['miss'] / row['miss_ref']:9.2f}")
        for release in releases:
            other = results[release]["rows"][i]
            line += (f"{other['hit'] / other['uncached']:17.2f}"
                     f"{other['miss'] / other['uncached']:9.2f}")
            for kind in ("hit", "miss"):
                mine = row[kind] / row["uncached"]
                theirs = other[kind] / other["uncached"]
                verdicts.append((f"{row['tier']} B={row['batch']} {kind}: cheaper than "
                                 f"torchcache {results[release]['version']}",
                                 theirs / mine, mine < theirs, "x"))
        print(line)
        if row["batch"] == 1:
            verdicts.append((f"{row['tier']} B=1 all-hit <= 6x uncached",
                             row["hit"] / row["uncached"], row["hit"] <= 6 * row["uncached"],
                             "x uncached"))
        if row["batch"] == 256:
            verdicts.append((f"{row['tier']} B=256 all-hit <= 1.3x floor",
                             row["hit"] / row["floor"], row["hit"] <= 1.3 * row["floor"],
                             "x floor"))
        verdicts.append((f"{row['tier']} B={row['batch']} miss <= 1.3x miss ref",
                         row["miss"] / row["miss_ref"], row["miss"] <= 1.3 * row["miss_ref"],
                         "x miss ref"))
    print("\ntargets")
    for what, value, ok, unit in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}: {value:.2f}{unit}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
