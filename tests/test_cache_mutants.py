"""Behaviours of the call flow (torchcache_c/cache.py) that mutation testing found
unguarded (docs/testing.md, "Mutation testing"). Outputs are checked against the module run
without the cache, stored bytes against the tensors that were put, messages against what
they must tell the user.
"""
import copy
import gc
import json
import logging
import os
import signal
import stat
import time

import pytest
import torch
import torch.nn as nn

from torchcache_c import _C, cache, torchcache
from torchcache_c.tiers import HostTier


class _Scale(nn.Module):
    """Counts forward runs; y = 2x + 1 (the uncached reference is _reference)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return 2 * x + 1


def _reference(x):
    return 2 * x + 1


def _persistent_class(cache_dir):
    @torchcache(persistent=True, persistent_cache_dir=str(cache_dir))
    class Scale(_Scale):
        pass

    return Scale


def test_a_fresh_instance_serves_what_an_earlier_one_stored_on_disk(tmp_path):
    """The layout sidecar written by the first instance is read back by the second (its
    store handle is a new one): every row is a hit, and the outputs are forward's."""
    Scale = _persistent_class(tmp_path)
    x = torch.randn(5, 3)
    first = Scale().eval()
    with torch.no_grad():
        first(x)
    del first
    gc.collect()
    second = Scale().eval()
    with torch.no_grad():
        out = second(x)
    assert second.calls == 0 and torch.equal(out, _reference(x))


@pytest.mark.parametrize("damage", ["unknown dtype", "dtypes not a list", "unknown format",
                                    "leaves and dtypes differ"])
def test_a_layout_sidecar_that_does_not_match_the_schema_is_recomputed_not_trusted(
        tmp_path, damage):
    Scale = _persistent_class(tmp_path)
    x = torch.randn(4, 3)
    first = Scale().eval()
    with torch.no_grad():
        first(x)
    (sidecar,) = first.cache_instance.cache_dir.glob("layout-*.json")
    del first
    gc.collect()
    data = json.loads(sidecar.read_text())
    if damage == "unknown dtype":
        data["dtypes"] = ["float33"]
    elif damage == "dtypes not a list":
        data["dtypes"] = "float32"
    elif damage == "unknown format":
        data["format"] = "torchcache_c-layout-99"
    else:
        data["dtypes"] = data["dtypes"] * 2
    sidecar.write_text(json.dumps(data))
    second = Scale().eval()
    with torch.no_grad():
        out = second(x)
    assert second.calls == 1 and torch.equal(out, _reference(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_the_host_tier_fetches_rows_in_the_dtype_they_were_stored_in(dtype):
    tier = HostTier(_C.Store(None, max_bytes=1 << 20), cache._dtype_from_word)
    keys = torch.arange(8, dtype=torch.int64).view(4, 2) + 11
    src = (torch.arange(24).view(4, 6) % 7 - 2).to(dtype)
    assert tier.put(keys, src) == 4
    got, served = tier.fetch(keys, dtype, torch.device("cpu"))
    assert bool(served.all()) and got.dtype == dtype and torch.equal(got, src)


def test_clear_forgets_memory_entries_and_the_next_call_recomputes():
    Scale = torchcache()(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(3, 3)
    with torch.no_grad():
        m(x)
        m.cache_instance.clear()
        out = m(x)
    assert m.calls == 2 and torch.equal(out, _reference(x))


def test_clear_empties_the_persistent_directory_of_this_module_key(tmp_path):
    Scale = _persistent_class(tmp_path)
    m = Scale().eval()
    x = torch.randn(3, 3)
    with torch.no_grad():
        m(x)
    path = m.cache_instance.cache_dir
    assert any(path.glob("layout-*.json"))
    m.cache_instance.clear()
    assert not any(path.glob("layout-*.json")) and not any(path.glob("*.seg*"))
    with torch.no_grad():
        out = m(x)
    assert m.calls == 2 and torch.equal(out, _reference(x))


def test_a_copy_keeps_the_key_and_a_private_persistent_directory_is_shared():
    Scale = torchcache(persistent=True)(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(3, 3)
    with torch.no_grad():
        m(x)
    twin = copy.deepcopy(m)
    assert twin.cache_instance.module_hash == m.cache_instance.module_hash
    assert twin.cache_instance.cache_dir == m.cache_instance.cache_dir
    with torch.no_grad():
        out = twin(x)
    assert twin.calls == m.calls == 1 and torch.equal(out, _reference(x))


def test_the_private_persistent_parent_is_a_0700_torchcache_c_temporary_directory():
    Scale = torchcache(persistent=True)(type("Scale", (_Scale,), {}))
    parent = Scale().cache_instance.cache_dir.parent
    assert parent.name.startswith("torchcache_c-")
    assert stat.S_IMODE(os.stat(parent).st_mode) == 0o700


def test_removing_an_already_removed_private_directory_at_exit_is_not_an_error(tmp_path,
                                                                              caplog):
    gone = tmp_path / "gone"
    with caplog.at_level(logging.INFO, logger="torchcache_c"):
        cache._remove_private_dir(gone, os.getpid())
    assert f"removed temporary cache directory {gone}" in caplog.messages


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_calls_although_the_parent_held_the_cache_lock_at_the_fork():
    """A lock held at the fork (here by the forking thread itself) is never released in the
    child: the child must get fresh locks, or its first call waits forever."""
    Scale = torchcache()(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(3, 3)
    with torch.no_grad():
        m(x)
    with m.cache_instance._lock:
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 only if the call answered correctly
            status = 1
            try:
                with torch.no_grad():
                    status = 0 if torch.equal(m(x), _reference(x)) else 1
            finally:
                os._exit(status)
    # A child that deadlocked never exits: give it a minute (a hang guard, not a speed
    # limit), then stop it.
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child's call never returned (a lock held at the fork)")
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_zero_memory_limit_reports_the_cache_full_after_the_first_miss():
    Scale = torchcache(max_memory_cache_size=0)(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    assert not m.cache_instance.is_memory_cache_full
    x = torch.randn(1, 3)
    with torch.no_grad():
        m(x)
        assert m.cache_instance.is_memory_cache_full
        out = m(x)
    assert m.cache_instance.is_memory_cache_full and m.calls == 2
    assert torch.equal(out, _reference(x))


def test_an_input_requiring_grad_is_refused_with_the_remedy():
    Scale = torchcache()(type("Scale", (_Scale,), {}))
    m = Scale()
    with pytest.raises(ValueError) as err:
        m(torch.randn(2, 3, requires_grad=True))
    message = str(err.value)
    assert "argument" in message and "requires grad while grad is enabled" in message
    assert "Detach the input, call under torch.no_grad(), or do not cache this module" \
        in message


def test_many_calls_under_one_key_keep_one_store_and_never_warn_of_churn(caplog):
    Scale = torchcache()(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        handles = set()
        for _ in range(6):
            assert torch.equal(m(x), _reference(x))
            handles.add(id(m.cache_instance._handle))
    assert m.calls == 1 and len(handles) == 1
    assert "keep changing between calls" not in caplog.text


def test_instances_with_equal_keys_share_one_memory_store():
    Scale = torchcache()(type("Scale", (_Scale,), {}))
    a, b = Scale().eval(), Scale().eval()
    x = torch.randn(3, 3)
    with torch.no_grad():
        a(x)
        out = b(x)
    assert b.calls == 0 and torch.equal(out, _reference(x))


def test_the_instance_hash_helper_uses_the_cache_s_subsample_count():
    from torchcache_c.hashing import hash_tensor

    Scale = torchcache(subsample_count=4)(type("Scale", (_Scale,), {}))
    x = torch.randn(2, 100)
    got = Scale().cache_instance.hash_tensor(x)
    assert torch.equal(got, hash_tensor(x, subsample_count=4))
    assert not torch.equal(got, hash_tensor(x))


def test_the_module_hash_override_warning_names_the_override(caplog):
    Scale = torchcache(persistent_module_hash="fixed-key-7")(type("Scale", (_Scale,), {}))
    with caplog.at_level(logging.WARNING, logger="torchcache_c"):
        Scale()
    assert "persistent_module_hash='fixed-key-7' overrides the module key" in caplog.text


# ---- messages: what is wrong and what to do (each text and its arguments) ----------------


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "torchcache_c" and r.levelno == logging.WARNING]


def test_dropout_in_training_mode_is_named_with_the_remedy(caplog):
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x)

    Cached = torchcache()(Noisy)
    m = Cached().train()
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        m(torch.ones(4, 3))
        m(torch.ones(4, 3) * 2)
    (msg,) = [w for w in _warnings(caplog) if "dropout" in w]
    assert "is cached in training mode with active dropout" in msg
    assert msg.endswith("): one random sample per item is stored and served from then on. "
                        "Call .eval() on the cached module")
    assert Cached.__qualname__.split(".")[-1] in msg


def test_an_in_memory_cache_in_a_dataloader_worker_is_told_to_go_persistent(caplog,
                                                                           monkeypatch):
    # torch's worker query answers as it does inside a DataLoader worker process.
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    monkeypatch.setattr(cache, "_warned_process", set())
    monkeypatch.setattr(cache, "_worker_unchecked", True)  # as in a new process
    Scale = torchcache()(type("WorkerScale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        assert torch.equal(m(x), _reference(x))
        m(x)
    (msg,) = [w for w in _warnings(caplog) if "DataLoader worker" in w]
    assert msg.startswith(m.cache_instance.qualname + " uses an in-memory cache")
    assert "Use persistent=True" in msg and "or cache in the main process" in msg


def test_the_worker_question_is_asked_once_per_process_and_again_after_fork():
    # The parent asks at its first call and not again; a forked child (a DataLoader
    # worker made by fork) asks again at its own first call.
    Scale = torchcache()(type("ForkScale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(2, 3)
    with torch.no_grad():
        m(x)
    assert cache._worker_unchecked is False
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            asked = []
            torch.utils.data.get_worker_info = lambda: asked.append(1) or object()
            before = cache._worker_unchecked
            with torch.no_grad():
                ok = torch.equal(m(x), _reference(x))
                m(x)
            os.write(write, f"{before} {len(asked)} {ok}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    answer = os.read(read, 100).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert answer == "True 1 True"


def test_a_zero_memory_limit_says_which_option_is_zero(caplog):
    Scale = torchcache(max_memory_cache_size=0)(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        assert torch.equal(m(x), _reference(x))
    assert ("max_memory_cache_size=0: new outputs are not stored, forward keeps running"
            in _warnings(caplog))


def test_a_zero_persistent_limit_names_the_persistent_option(caplog, tmp_path):
    Scale = torchcache(persistent=True, persistent_cache_dir=str(tmp_path),
                       max_persistent_cache_size=0)(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        assert torch.equal(m(x), _reference(x))
        assert torch.equal(m(x), _reference(x))
    assert m.calls == 2
    assert ("max_persistent_cache_size=0: new outputs are not stored, forward keeps running"
            in _warnings(caplog))


def test_a_full_persistent_cache_names_the_persistent_option(caplog, tmp_path):
    Scale = torchcache(persistent=True, persistent_cache_dir=str(tmp_path),
                       max_persistent_cache_size=4096)(type("Scale", (_Scale,), {}))
    m = Scale().eval()
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        for _ in range(4):
            x = torch.randn(64, 64)
            assert torch.equal(m(x), _reference(x))
    assert ("cache is full (max_persistent_cache_size reached); new outputs are not "
            "stored, forward keeps running") in _warnings(caplog)


def test_parameters_changing_at_every_call_warn_of_churn_once(caplog):
    @torchcache()
    class Lin(nn.Linear):
        def __init__(self):
            super().__init__(3, 2)
            self.requires_grad_(False)

    m = Lin().eval()
    x = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        for _ in range(8):
            m.weight += 1
            expected = torch.nn.functional.linear(x, m.weight, m.bias)
            assert torch.allclose(m(x), expected)
    churn = [w for w in _warnings(caplog) if "keep changing between calls" in w]
    assert len(churn) == 1
    assert "Call .eval() on the frozen module" in churn[0]


def test_a_store_fault_warning_says_where_later_faults_are_counted(caplog, tmp_path):
    Scale = torchcache(persistent=True, persistent_cache_dir=str(tmp_path))(
        type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(8, 6)
    with torch.no_grad():
        m(x)
        m(x)
        for seg in tmp_path.rglob("seg-*.tcs"):
            os.truncate(seg, 0)
        with caplog.at_level(logging.WARNING, logger="torchcache_c"):
            out = m(x)
    assert torch.equal(out, _reference(x))
    (msg,) = [w for w in _warnings(caplog) if "store fault" in w]
    assert msg.startswith("cache store fault (short_read): ")
    assert msg.endswith("the affected items are computed instead of read, and later faults "
                        "of this kind are counted in stats()['store']['faults']")


def test_a_stored_layout_naming_an_unloaded_class_runs_forward_and_says_so(caplog, tmp_path):
    import collections

    Pair = collections.namedtuple("Pair", ["a", "b"])

    @torchcache(persistent=True, persistent_cache_dir=str(tmp_path))
    class Split(nn.Module):
        def forward(self, x):
            return Pair(2 * x, x + 1)

    x = torch.randn(3, 2)
    with torch.no_grad():
        Split().eval()(x)
    gc.collect()
    (sidecar,) = tmp_path.rglob("layout-*.json")
    text = sidecar.read_text()
    assert json.dumps(Pair.__module__) in text
    sidecar.write_text(text.replace(json.dumps(Pair.__module__), '"tc_module_never_imported"'))
    second = Split().eval()
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        out = second(x)
    assert torch.equal(out.a, 2 * x) and torch.equal(out.b, x + 1)
    (msg,) = [w for w in _warnings(caplog) if "output layout" in w]
    assert msg == ("a stored output layout names a class that is not loaded in this "
                   f"process; {second.cache_instance.qualname} runs forward for such calls")


def test_a_removed_cache_parent_gets_its_layout_sidecar_written_again(caplog, tmp_path):
    """Another process pruned the whole directory tree while this one runs: a new call
    context writes its layout sidecar again (parents made), without a warning."""
    import shutil

    @torchcache(persistent=True, persistent_cache_dir=str(tmp_path / "p" / "q"))
    class Shift(nn.Module):
        def forward(self, x, k: int = 0):
            return x + k

    m = Shift().eval()
    x = torch.randn(3, 2)
    with caplog.at_level(logging.WARNING, logger="torchcache_c"), torch.no_grad():
        m(x)
        shutil.rmtree(tmp_path / "p")
        assert torch.equal(m(x, k=5), x + 5)
    assert not [w for w in _warnings(caplog) if "could not write" in w]
    assert len(list((tmp_path / "p").rglob("layout-*.json"))) == 1


def test_a_second_directory_serves_what_the_first_uploaded_to_a_file_remote(tmp_path):
    """The issue 15 hooks in one process: the remote tier is attached to the store of the
    module key, a missing layout sidecar is copied from the remote, and the missing rows
    are filled from it, so a second local directory runs forward on no row it holds."""
    pytest.importorskip("obstore", reason="the remote extra (obstore) is not installed")
    from torchcache_c import remote

    url = f"file://{tmp_path / 'bucket'}"

    def scale_class(local):
        return torchcache(persistent=True, persistent_cache_dir=str(tmp_path / local),
                          persistent_remote=url, remote_refresh_s=0,
                          persistent_module_hash="remote-shared-7")(
            type("Scale", (_Scale,), {}))

    x = torch.randn(6, 3)
    first = scale_class("a")().eval()
    with torch.no_grad():
        assert torch.equal(first(x), _reference(x))
    assert remote.flush(60)
    assert list((tmp_path / "bucket").rglob("layout-*.json"))
    second = scale_class("b")().eval()
    assert second.cache_instance.module_hash == first.cache_instance.module_hash
    with torch.no_grad():
        out = second(torch.cat([x[:4], 3 * x[4:]]))
    assert torch.equal(out[:4], _reference(x[:4]))
    assert torch.equal(out[4:], _reference(3 * x[4:]))
    assert second.calls == 1  # the two new rows only
    assert list((tmp_path / "b").rglob("layout-*.json"))
    # the in-process remote is an attribute of the second directory's store only
    assert second.cache_instance._handle is not first.cache_instance._handle


def test_an_instance_without_a_remote_never_reads_the_remote_of_its_directory(tmp_path):
    """Two instances of one key on one local directory, one with a remote and one
    without: the one without keeps its own store and never fills rows from the remote."""
    pytest.importorskip("obstore", reason="the remote extra (obstore) is not installed")
    from torchcache_c import remote

    url = f"file://{tmp_path / 'bucket'}"

    def scale(local, **remote_options):
        return torchcache(persistent=True, persistent_cache_dir=str(tmp_path / local),
                          persistent_module_hash="remote-shared-8", **remote_options)(
            type("Scale", (_Scale,), {}))().eval()

    x, y = torch.randn(5, 3), torch.randn(2, 3)
    uploader = scale("c", persistent_remote=url, remote_refresh_s=0)
    with torch.no_grad():
        uploader(x)
        assert remote.flush(60)
        with_remote = scale("d", persistent_remote=url, remote_refresh_s=0)
        with_remote(y)
        without = scale("d")
        out = without(x)
    assert torch.equal(out, _reference(x)) and without.calls == 1
    assert without.cache_instance._handle.remote is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_removing_the_private_parent_at_exit_closes_the_stores_in_it_first(tmp_path):
    """The at-exit removal of the temporary parent closes every store under it: no
    descriptor stays open on a segment of the removed directory."""
    parent = tmp_path / "private"
    Scale = torchcache(persistent=True, persistent_cache_dir=str(parent))(
        type("Scale", (_Scale,), {}))
    m = Scale().eval()
    x = torch.randn(4, 3)
    with torch.no_grad():
        m(x)
        assert torch.equal(m(x), _reference(x)) and m.calls == 1

    def open_under_parent():
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(parent)):
                found.append(target)
        return found

    assert open_under_parent()  # the store holds its segments open while in use
    cache._remove_private_dir(parent, os.getpid())
    assert not parent.exists()
    assert open_under_parent() == []



def test_an_io_error_stops_storing_with_a_warning_that_gives_the_error(tmp_path):
    """A file size limit (RLIMIT_FSIZE: stops writes even for root) makes the store's
    writes fail; the calls keep returning forward's outputs and one WARNING quotes the
    store's error. In a child process: the limit applies to the whole process."""
    import subprocess
    import sys

    code = f"""
import logging, resource
import torch
from torchcache_c import torchcache
logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
@torchcache(persistent=True, persistent_cache_dir={str(tmp_path)!r})
def double(x):
    return 2 * x
for i in range(6):
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(i))
    assert torch.equal(double(x), 2 * x)
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    io = [line for line in proc.stderr.splitlines()
          if line.startswith("LOG cache stopped storing after an I/O error: ")]
    assert len(io) == 1, proc.stderr[-3000:]
    assert "too large" in io[0]


def test_a_forward_that_unfreezes_a_parameter_under_grad_is_refused_with_the_remedy():
    """forward assigns an attribute of the key (the key is recomputed after it) and makes
    a parameter require grad: the call raises instead of returning an output that cannot
    carry gradients to it. Under no_grad the same forward is served normally."""
    from torchcache_c.keys import TrainableParametersError

    class Unfreezes(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.full((3,), 2.0), requires_grad=False)
            self.step = 0

        def forward(self, x):
            self.step += 1
            self.w.requires_grad_(True)
            return x * self.w.detach()

    x = torch.randn(2, 3)
    m = torchcache()(Unfreezes)().eval()
    with pytest.raises(TrainableParametersError,
                       match=r"parameter 'w' requires grad: a cached output cannot carry "
                             r"gradients to it\. Freeze it with requires_grad_\(False\) or "
                             r"call under torch\.no_grad\(\)"):
        m(x)
    frozen = torchcache()(type("Unfreezes", (Unfreezes,), {}))().eval()
    with torch.no_grad():
        assert torch.equal(frozen(x), 2 * x)
