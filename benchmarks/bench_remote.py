"""The object-store tier (issue 15, docs/remote.md): a batch of hits served from the remote
with a cold local directory, and from the local read-through copy, next to the client's
own reads of the same bytes (one ranged GET per record; one get_ranges call, which
coalesces them).  Target: the remote path within 1.5x of the client's coalesced read.

    python benchmarks/bench_remote.py [--items 4096] [--batch 256] [--dim 768] [--trials 15]

Starts moto_server (pip install "moto[server]") on a free port of 127.0.0.1 unless
--url and the AWS_* variables point elsewhere (a real bucket).  Prints medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import torch
from _machine import cpu_description, load_average

from torchcache_c import _C
from torchcache_c import remote
from torchcache_c.cache import _dtype_from_word
from torchcache_c.tiers import HostTier


def start_moto():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()",
                             "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("moto_server did not start") from None
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true",
                      AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT")).close()
    return proc, "s3://bench/cache"


def median_ms(fn, trials):
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    proc = None
    url = args.url
    if url is None:
        proc, url = start_moto()
    tmp = tempfile.mkdtemp(prefix="bench_remote-")
    try:
        run(args, url, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if proc is not None:
            proc.terminate()
            proc.wait()


def run(args, url: str, tmp: str) -> None:
    key = "benchkey"
    gen = torch.Generator().manual_seed(0)
    keys = torch.randint(-2**62, 2**62, (args.items, 2), generator=gen, dtype=torch.int64)
    values = torch.randn(args.items, args.dim, generator=gen)
    writer_dir = os.path.join(tmp, "writer", key)
    # The writer: one segment, sealed and uploaded as the uploader does it at exit.
    with _C.Store(writer_dir) as st:
        st.put(keys, values)
    wtier = remote.RemoteTier(url, writer_dir, key, 0, _dtype_from_word)
    t0 = time.perf_counter()
    wtier.notify()  # as the cached call does after a put; then the flush at exit's path
    assert remote.flush(600)
    upload_s = time.perf_counter() - t0
    print(f"uploaded {args.items} records ({args.items * (128 + 4 * args.dim) / 2**20:.1f} "
          f"MiB) in {wtier.stats['chunks_uploaded']} chunk(s), {upload_s * 1e3:.0f} ms")

    reader = remote.RemoteTier(url, os.path.join(tmp, "reader"), key, 3600, _dtype_from_word)
    store = remote.open_store(url)
    pick = torch.randperm(args.items, generator=gen)[: args.batch].sort().values
    batch_keys = keys[pick].contiguous()
    want = values[pick]
    lock = threading.Lock()
    # Cold local stores (empty directories) are opened before the clock starts.
    cold = [HostTier(_C.Store(os.path.join(tmp, f"cold{i}", key), refresh_ms=0),
                     _dtype_from_word) for i in range(args.trials + 1)]

    def cold_remote():
        tier = cold.pop()
        present = torch.frombuffer(bytearray(tier.lookup(batch_keys)), dtype=torch.uint8)
        assert not present.any()
        reader.fill(tier, [batch_keys], lock)
        out, served = tier.fetch(batch_keys, torch.float32, torch.device("cpu"))
        assert bool(served.all()) and torch.equal(out, want)
        cold_remote.tier = tier

    t0 = time.perf_counter()
    cold_remote()  # the first one lists the remote and fetches the index objects
    first_ms = (time.perf_counter() - t0) * 1e3
    lists = reader.stats["lists"]
    gets0 = reader.stats["range_gets"]
    found, rows = reader.index.lookup(batch_keys)
    assert bool(found.all())
    path = reader.index.chunks[int(rows[0, 0])][0]
    assert bool((rows[:, 0] == rows[0, 0]).all()), "one chunk expected"
    starts = rows[:, 1].tolist()
    ends = (rows[:, 1] + rows[:, 2]).tolist()

    def client_coalesced():
        remote.get_ranges(store, path, starts, ends)

    # The two are measured in turns, so that a noisy neighbour costs both alike.
    remote_t, coalesced_t = [], []
    for _ in range(args.trials):
        for fn, out in ((cold_remote, remote_t), (client_coalesced, coalesced_t)):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    remote_ms = statistics.median(remote_t)
    coalesced_ms = statistics.median(coalesced_t)
    per_batch = (reader.stats["range_gets"] - gets0) / args.trials
    assert reader.stats["lists"] == lists
    tier = cold_remote.tier

    def local():
        tier.lookup(batch_keys)
        out, served = tier.fetch(batch_keys, torch.float32, torch.device("cpu"))
        assert bool(served.all())

    local_ms = median_ms(local, args.trials)
    def client_each():
        import obstore

        for s, e in zip(starts, ends, strict=True):
            obstore.get_range(store, path, start=s, end=e)

    each_ms = median_ms(client_each, 3)
    mib = args.batch * 4 * args.dim / 2**20
    print(f"CPU: {cpu_description()}; load average {load_average()}")
    print(f"batch of {args.batch} hits, {args.dim} float32 each ({mib:.2f} MiB), "
          f"median of {args.trials}")
    print(f"  remote, cold local (fill + lookup + gather): {remote_ms:8.2f} ms, "
          f"{per_batch:.1f} GET(s) per batch")
    print(f"  remote, first batch (+ list, index GETs):    {first_ms:8.2f} ms")
    print(f"  local read-through copy (lookup + gather):   {local_ms:8.2f} ms")
    print(f"  client, one ranged GET per record:           {each_ms:8.2f} ms, "
          f"{args.batch} GETs")
    print(f"  client, get_ranges (coalesced):              {coalesced_ms:8.2f} ms, "
          f"{remote.count_requests(list(zip(starts, ends, strict=True)))} GET(s)")
    ratio = remote_ms / coalesced_ms
    print(f"remote path / client coalesced read: {ratio:.2f}x (target <= 1.5x): "
          f"{'OK' if ratio <= 1.5 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
