"""The object-store tier (issue 15, docs/remote.md) against a real S3-wire server
(moto_server on 127.0.0.1, started here) and against file:// trees.

Processes have separate local directories and share one bucket, as nodes would."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import torchcache_c
from torchcache_c import torchcache

obstore = pytest.importorskip("obstore", reason="the remote extra (obstore) is not installed: "
                              'pip install "torchcache_c[remote]"')

WORKER = str(Path(__file__).with_name("remote_worker.py"))
ROOT = str(Path(__file__).resolve().parents[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto_server on a free port of 127.0.0.1: start, wait for the port, stop."""

    def __init__(self) -> None:
        pytest.importorskip("moto.server", reason="moto[server] is not installed: "
                            'pip install "moto[server]" (the test extra has it)')
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1",
             "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def bucket(self, name: str) -> str:
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()
        return f"s3://{name}/cache"

    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def moto():
    server = MotoServer()
    yield server
    server.stop()


_bucket_no = [0]


@pytest.fixture
def s3(moto, monkeypatch):
    """A fresh bucket's URL, with the environment that reaches the server set."""
    for k, v in moto.env().items():
        monkeypatch.setenv(k, v)
    _bucket_no[0] += 1
    return moto.bucket(f"tc-{os.getpid()}-{_bucket_no[0]}")


def worker(tmp_path: Path, name: str, env_extra=None, **cfg):
    """Runs remote_worker.py to completion; returns its saved results."""
    out = tmp_path / f"{name}.pt"
    cfg = dict(cfg, out=str(out))
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    proc = subprocess.run([sys.executable, WORKER, json.dumps(cfg)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(out)
    res["stderr"] = proc.stderr
    return res


def expected(n: int, first: int = 0, last=None):
    """What remote_worker.Net returns for items [first, last), computed here."""
    w = torch.randn(16, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(99))[first:last]
    return torch.cat([x * w, torch.sin(x) + w], 1), (x * x).to(torch.float64)


def same(res: dict, n: int, first: int = 0, last=None, suffix: str = "") -> bool:
    y, nn = expected(n, first, last)
    return torch.equal(res["y" + suffix], y) and torch.equal(res["n" + suffix], nn)


def objects(url: str, env: dict) -> list:
    from torchcache_c import remote

    return sorted(m["path"] for m in remote.list_objects(remote.open_store(url), ""))


# ---- options ---------------------------------------------------------------------------

def test_option_validation(tmp_path):
    with pytest.raises(ValueError, match="persistent=True"):
        torchcache(persistent_remote="s3://b/p")
    for bad in ("http://x/y", "s3://", 5, "file://relative/path"):
        with pytest.raises((TypeError, ValueError), match="persistent_remote"):
            torchcache(persistent=True, persistent_remote=bad)
    with pytest.raises(TypeError, match="remote_refresh_s"):
        torchcache(persistent=True, persistent_remote="s3://b/p", remote_refresh_s=-1)
    torchcache(persistent=True, persistent_remote="s3://b/p")  # accepted


# ---- two processes, one bucket -------------------------------------------------------

def test_second_process_serves_everything_from_the_bucket(tmp_path, s3):
    a = worker(tmp_path, "a", dir=str(tmp_path / "a"), url=s3, items=200, batch=32)
    assert a["forward_rows"] == 200
    names = objects(s3, {})
    assert any("/c-seg-" in n for n in names) and any("/i-seg-" in n for n in names)
    assert any("/layout-" in n for n in names)
    b = worker(tmp_path, "b", dir=str(tmp_path / "b"), url=s3, items=200, batch=32)
    assert b["forward_rows"] == 0
    assert torch.equal(a["y"], b["y"]) and torch.equal(a["n"], b["n"]) and same(b, 200)
    # b kept what it fetched: a third run on b's directory, without the remote, hits
    c = worker(tmp_path, "c", dir=str(tmp_path / "b"), url=None, items=200, batch=32)
    assert c["forward_rows"] == 0 and torch.equal(a["y"], c["y"])
    # b uploaded nothing of what it only read
    assert sum("/c-seg-" in n for n in objects(s3, {})) == sum("/c-seg-" in n for n in names)


def test_file_url_and_cli(tmp_path, capsys):
    url = f"file://{tmp_path / 'bucket'}"
    a = worker(tmp_path, "a", dir=str(tmp_path / "a"), url=url, items=70, batch=16)
    b = worker(tmp_path, "b", dir=str(tmp_path / "b"), url=url, items=70, batch=16)
    assert a["forward_rows"] == 70 and b["forward_rows"] == 0
    assert same(b, 70)
    _cli_checks(url, tmp_path / "bucket", capsys)


def _cli_checks(url: str, root: Path, capsys) -> None:
    """info, verify and prune on a remote URL (a file:// tree, so bytes can be damaged)."""
    from torchcache_c import cli

    assert cli.main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (mod,) = info["modules"]
    assert mod["entries"] == 140 and mod["layouts"] == 1 and mod["orphan_chunks"] == 0
    assert cli.main(["verify", url]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    (chunk,) = (root / mod["module_key"]).glob("c-seg-*")
    data = bytearray(chunk.read_bytes())
    data[300] ^= 4
    chunk.write_bytes(bytes(data))
    assert cli.main(["verify", url, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["modules"][0]["corrupt"] == 1
    assert "checksum" in report["modules"][0]["problems"][0]["reason"]
    assert cli.main(["prune", url, "--older-than", "0", "--dry-run"]) == 0
    assert "would remove 1 of 1" in capsys.readouterr().out
    assert list((root / mod["module_key"]).iterdir())
    assert cli.main(["prune", url, "--older-than", "0", "--yes"]) == 0
    capsys.readouterr()
    assert not [p for p in (root / mod["module_key"]).rglob("*") if p.is_file()]


def test_small_chunks_and_partial_overlap(tmp_path, s3):
    """Many sealed chunks (a 4 KiB threshold); the reader asks for a range that straddles
    what the writer stored: it serves the overlap and computes the rest."""
    env = {"TORCHCACHE_C_REMOTE_CHUNK_BYTES": "4096"}
    worker(tmp_path, "a", env, dir=str(tmp_path / "a"), url=s3, items=120, batch=8)
    assert sum("/c-seg-" in n for n in objects(s3, {})) > 3
    b = worker(tmp_path, "b", dir=str(tmp_path / "b"), url=s3, items=200, batch=20,
               first=60, last=200)
    assert b["forward_rows"] == 80
    assert same(b, 200, 60, 200)


def test_ranks_on_different_nodes_share_through_the_bucket(tmp_path, s3):
    """Two DDP ranks (a gloo process group) with separate local directories, as on
    two nodes: each computes its half, flushes, meets the other at dist.barrier(),
    then serves the other's half from the bucket with no forward."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    port = _free_port()
    procs = []
    for rank in (0, 1):
        cfg = dict(dir=str(tmp_path / f"node{rank}"), url=s3, items=128, batch=16,
                   first=64 * rank, last=64 * rank + 64, flush=True,
                   dist_port=port, rank=rank, then=[0, 128],
                   out=str(tmp_path / f"rank{rank}.pt"))
        procs.append(subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)],
                                      env=dict(os.environ, PYTHONPATH=ROOT),
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["flushed"] and r1["flushed"]
    assert r0["forward_rows"] == 64 and r1["forward_rows"] == 64
    assert r0["forward_rows_then"] == 0 and r1["forward_rows_then"] == 0
    assert same(r0, 128, suffix="2")
    assert torch.equal(r0["y2"], r1["y2"]) and torch.equal(r0["n2"], r1["n2"])
    assert torch.equal(r0["y2"][:64], r0["y"]) and torch.equal(r1["y2"][64:], r1["y"])


# ---- faults ----------------------------------------------------------------------------

def test_damaged_or_missing_objects_are_recomputed(tmp_path, s3):
    """Chunks with flipped bits or cut short, a chunk whose index is gone (what a writer
    killed between its two PUTs leaves: never looked at) and an index whose chunk is
    gone: those items are computed, every other one is served, all bit-exact."""
    from torchcache_c import remote

    env = {"TORCHCACHE_C_REMOTE_CHUNK_BYTES": "4096"}
    worker(tmp_path, "a", env, dir=str(tmp_path / "a"), url=s3, items=100, batch=10)
    store = remote.open_store(s3)
    names = objects(s3, {})
    chunks = [n for n in names if "/c-seg-" in n]
    indexes = [n for n in names if "/i-seg-" in n]
    assert len(chunks) >= 5
    data = bytearray(obstore.get(store, chunks[0]).bytes())
    data[200] ^= 0x01  # a payload bit of the first record
    data[len(data) - 40] ^= 0x80  # and one of the last
    obstore.put(store, chunks[0], bytes(data))
    data = bytearray(obstore.get(store, chunks[1]).bytes())
    obstore.put(store, chunks[1], bytes(data[: len(data) // 2]))
    obstore.delete(store, indexes[2])
    obstore.delete(store, chunks[3])
    b = worker(tmp_path, "b", dir=str(tmp_path / "b"), url=s3, items=100, batch=10)
    assert 0 < b["forward_rows"] < 100, b["stderr"][-3000:]
    assert same(b, 100)
    assert "failed its check" in b["stderr"]
    from torchcache_c import cli

    assert cli.main(["verify", s3]) == 1  # the damage, as the CLI sees it


def test_writer_killed_during_upload_serves_nothing_wrong(tmp_path, s3):
    env = dict(os.environ, PYTHONPATH=ROOT, TORCHCACHE_C_REMOTE_CHUNK_BYTES="2048")
    for attempt, delay in enumerate((0.0, 0.05)):
        cfg = dict(dir=str(tmp_path / f"w{attempt}"), url=s3, items=200, batch=10,
                   out=str(tmp_path / f"w{attempt}.pt"), signal_ready=True)
        p = subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        b = worker(tmp_path, f"r{attempt}", dir=str(tmp_path / f"r{attempt}"), url=s3,
                   items=200, batch=10)
        assert same(b, 200)


def test_server_stopped_mid_run_turns_lookups_into_misses(tmp_path, monkeypatch, caplog):
    server = MotoServer()
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        url = server.bucket("stopped")
        worker(tmp_path, "a", dir=str(tmp_path / "a"), url=url, items=96, batch=16)

        @torchcache(persistent=True, persistent_cache_dir=str(tmp_path / "b"),
                    persistent_remote=url, remote_refresh_s=0)
        def f(x):
            calls.append(len(x))
            return x * 2

        calls: list = []
        x = torch.randn(64, 4)
        with caplog.at_level(logging.WARNING, logger="torchcache_c"):
            y0 = f(x[:32])
            server.stop()
            y1 = f(x[32:])   # the remote is gone: a miss, computed, no exception
            y2 = f(x[:32])   # what was computed before is a local hit
        assert torch.equal(y0, x[:32] * 2) and torch.equal(y1, x[32:] * 2)
        assert torch.equal(y2, y0)
        assert sum(calls) == 64
        assert any("unreachable" in r.getMessage() for r in caplog.records)
        # the uploader's failures are warnings too, and the local copy stays
        from torchcache_c import remote

        assert remote.flush(5) is False
    finally:
        server.stop()


def test_unreachable_remote_at_start_is_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    @torchcache(persistent=True, persistent_cache_dir=str(tmp_path / "c"),
                persistent_remote="s3://nowhere/p", remote_refresh_s=0)
    def g(x):
        return x + 1

    x = torch.randn(8, 3)
    with caplog.at_level(logging.WARNING, logger="torchcache_c"):
        assert torch.equal(g(x), x + 1)
        assert torch.equal(g(x), x + 1)
        # a flush (a barrier, or the exit) gives up on it with one warning; the
        # process's exit then does not wait for it again
        from torchcache_c import remote

        assert remote.flush(10) is False
    assert g.cache_instance.stats()["hits"] == 8
    assert any("gave up uploading" in r.getMessage() for r in caplog.records)


def test_exit_with_an_unreachable_remote_warns_once_and_keeps_the_local_copy(tmp_path):
    """A process whose remote never answers ends normally: one warning that it gave up,
    no second "not everything was uploaded" line, the records still in the local dir."""
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}",
               AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
               AWS_DEFAULT_REGION="us-east-1")
    local = tmp_path / "c"
    code = (
        "import torch\n"
        "from torchcache_c import torchcache\n"
        f"@torchcache(persistent=True, persistent_cache_dir={str(local)!r},\n"
        "            persistent_remote='s3://nowhere/p', remote_refresh_s=0)\n"
        "def g(x):\n"
        "    return x + 1\n"
        "x = torch.arange(12.0).reshape(4, 3)\n"
        "assert torch.equal(g(x), x + 1)\n"
        "print('done')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert proc.stderr.count("gave up uploading") == 1, proc.stderr
    assert "not everything was uploaded" not in proc.stderr, proc.stderr
    segments = list(local.rglob("seg-*.tcs"))
    assert segments and sum(p.stat().st_size for p in segments) > 0


def test_public_flush_is_exported():
    from torchcache_c import remote

    assert callable(remote.flush)
    assert torchcache_c.torchcache is torchcache


def test_forked_worker_uploads_at_its_exit(tmp_path):
    """A multiprocessing child (a DataLoader worker) ends with os._exit, skipping atexit:
    its records are uploaded by a multiprocessing finalizer."""
    import multiprocessing as mp

    url = f"file://{tmp_path / 'bucket'}"

    @torchcache(persistent=True, persistent_cache_dir=str(tmp_path / "local"),
                persistent_remote=url, remote_refresh_s=0)
    def triple(x):
        return x * 3

    def work():
        triple(torch.arange(10.0).reshape(5, 2))

    ctx = mp.get_context("fork")
    p = ctx.Process(target=work)
    p.start()
    p.join(120)
    assert p.exitcode == 0
    names = [q.name for q in (tmp_path / "bucket").rglob("*") if q.is_file()]
    assert any(n.startswith("i-seg-") and f"-{p.pid}-" in n for n in names), names


def test_a_dropped_cache_frees_its_remote_tier_while_the_uploader_idles(tmp_path):
    """The uploader thread keeps no tier alive between its rounds: once the module that
    owns a remote tier is dropped, the tier (its object-store client) is freed at the
    next collection, not when the idle thread next wakes (up to 5 s later)."""
    import gc
    import weakref

    url = f"file://{tmp_path / 'bucket'}"
    model = torchcache(persistent=True, persistent_cache_dir=str(tmp_path / "local"),
                       persistent_remote=url, remote_refresh_s=0)(
        type("Scale", (torch.nn.Module,), {"forward": lambda self, x: x * 2}))().eval()
    with torch.no_grad():
        model(torch.randn(4, 3))
    tier = weakref.ref(model.cache_instance._handle.remote)
    assert tier() is not None
    time.sleep(0.5)  # the uploader has taken its round and waits, idle
    del model
    gc.collect()
    assert tier() is None, gc.get_referrers(tier())
