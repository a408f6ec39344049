"""Processes sharing one cache (docs/multiprocess.md): DDP ranks on the gloo
backend, DataLoader workers started with fork, os.fork, forks while another
thread holds the cache, and forked children that exit normally."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import mp_helpers  # noqa: E402
from _helpers import run_python  # noqa: E402
from mp_helpers import CachedBatches, Elementwise, cached, inputs, reference  # noqa: E402

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def segments(path) -> list:
    return sorted(Path(path).rglob("seg-*.tcs"))


def wait_child(pid: int, timeout: float = 20.0) -> int:
    """Exit code of a forked child; kills it and fails if it hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} did not finish in {timeout} s (deadlock?)")


def in_child(body) -> int:
    """Runs body() in a forked child: exit code 0 if it returns, 1 if it raises."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
            body()
            code = 0
        except BaseException as exc:  # reported through the exit code
            print(f"child failed: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    return pid


# ---- DDP ranks on the gloo backend -----------------------------------------------

@pytest.mark.parametrize("world", [2, 4])
def test_ddp_ranks_serve_each_others_items_without_forward(tmp_path, world):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    port = mp_helpers.free_port()
    # Each rank raises (re-raised here) on a forward or a wrong output.  Forked
    # ranks skip importing torch again (20 s -> 2 s for 4 ranks on 2 cores).
    method = "fork" if hasattr(os, "fork") else "spawn"
    mp.start_processes(_ddp_entry, args=(world, port, str(tmp_path), 8), nprocs=world,
                       join=True, start_method=method)
    assert len(segments(tmp_path)) == world


def _ddp_entry(rank, world, port, cache_dir, shard):
    mp_helpers.ddp_rank(rank, world, port, cache_dir, shard)


# ---- DataLoader workers started with fork --------------------------------------------

@needs_fork
def test_dataloader_fork_workers_hit_store_their_own_segment_and_parent_sees_them(tmp_path):
    model = cached(tmp_path)
    with torch.no_grad():
        first = inputs(range(16))
        assert torch.equal(model(first), reference(first))
    (parent_seg,) = segments(tmp_path)
    parent_size = parent_seg.stat().st_size
    loader = torch.utils.data.DataLoader(CachedBatches(model, 6), batch_size=None,
                                         num_workers=2, multiprocessing_context="fork")
    worker_pids = set()
    for i, (out, calls, pid) in enumerate(loader):
        assert torch.equal(out, reference(inputs(range(8 * i, 8 * i + 8))))
        assert calls == (0 if i < 2 else 1), f"batch {i}: {calls} forward calls"
        worker_pids.add(pid)
    assert os.getpid() not in worker_pids and len(worker_pids) == 2
    # Workers never append to the parent's segment; each wrote its own.
    assert parent_seg.stat().st_size == parent_size
    names = [s.name for s in segments(tmp_path)]
    assert all(any(f"-{pid}-" in n for n in names) for pid in worker_pids)
    before = Elementwise.forward_calls
    with torch.no_grad():
        theirs = inputs(range(16, 48))
        out = model(theirs)  # a miss refreshes and finds the workers' records
    assert Elementwise.forward_calls == before
    assert torch.equal(out, reference(theirs))


@needs_fork
def test_dataloader_fork_workers_use_the_memory_tier_copy(tmp_path):
    # A store of its own: in-memory stores are shared by equal keys within a process,
    # and earlier tests may still hold one with these items.
    model = cached(persistent=False, module_hash=f"fork-memory-{tmp_path.name}")
    with torch.no_grad():
        model(inputs(range(16)))
    loader = torch.utils.data.DataLoader(CachedBatches(model, 4), batch_size=None,
                                         num_workers=2, multiprocessing_context="fork")
    for i, (out, calls, _) in enumerate(loader):
        assert torch.equal(out, reference(inputs(range(8 * i, 8 * i + 8))))
        assert calls == (0 if i < 2 else 1)
    # The memory tier is per process: the parent computes what the workers did.
    before = Elementwise.forward_calls
    with torch.no_grad():
        assert torch.equal(model(inputs(range(32))), reference(inputs(range(32))))
    assert Elementwise.forward_calls == before + 1


# ---- os.fork ---------------------------------------------------------------------

@needs_fork
def test_forked_child_hits_parent_items_and_parent_sees_child_items(tmp_path):
    model = cached(tmp_path)
    with torch.no_grad():
        model(inputs(range(16)))
    (parent_seg,) = segments(tmp_path)
    parent_size = parent_seg.stat().st_size

    def child():
        with torch.no_grad():
            calls, items = Elementwise.forward_calls, Elementwise.forward_items
            assert torch.equal(model(inputs(range(16))), reference(inputs(range(16))))
            assert Elementwise.forward_calls == calls
            assert torch.equal(model(inputs(range(8, 24))), reference(inputs(range(8, 24))))
            assert Elementwise.forward_calls == calls + 1
            assert Elementwise.forward_items == items + 8  # only the new ones

    assert wait_child(in_child(child)) == 0
    assert parent_seg.stat().st_size == parent_size
    assert len(segments(tmp_path)) == 2
    calls = Elementwise.forward_calls
    with torch.no_grad():
        assert torch.equal(model(inputs(range(24))), reference(inputs(range(24))))
        assert Elementwise.forward_calls == calls
        # The parent keeps appending to its own segment after the fork.
        assert torch.equal(model(inputs(range(24, 32))), reference(inputs(range(24, 32))))
    assert Elementwise.forward_calls == calls + 1
    assert parent_seg.stat().st_size > parent_size


@needs_fork
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "memory"])
def test_fork_while_another_thread_holds_the_cache_does_not_deadlock(tmp_path, persistent):
    model = cached(tmp_path, persistent=persistent)
    with torch.no_grad():
        model(inputs(range(16)))
    handle = model.cache_instance._handle
    holding, release = threading.Event(), threading.Event()

    def hold():
        with handle.lock, model.cache_instance._lock:
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    try:
        def child():
            with torch.no_grad():
                assert torch.equal(model(inputs(range(32))), reference(inputs(range(32))))

        pid = in_child(child)
    finally:
        release.set()
        holder.join()
    assert wait_child(pid) == 0


def test_forked_child_that_exits_normally_keeps_the_parents_temporary_directory():
    out = run_python("""
        import os, sys, torch
        import mp_helpers
        from mp_helpers import Elementwise, inputs

        model = mp_helpers.cached()  # persistent, in a private temporary directory
        with torch.no_grad():
            model(inputs(range(8)))
        cache_dir = model.cache_instance.cache_dir
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(1)
            with torch.no_grad():
                model(inputs(range(8, 16)))
            sys.exit(0)  # runs the atexit handlers the child inherited
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert cache_dir.is_dir(), "the child removed the parent's cache directory"
        calls = Elementwise.forward_calls
        with torch.no_grad():
            model(inputs(range(16)))
        assert Elementwise.forward_calls == calls
        print(cache_dir)
    """)
    assert not Path(out.strip()).exists()  # removed when the parent exited
