"""Writers killed with SIGKILL while writing, with outcomes that do not depend on when
the signal lands (the deterministic successor of test_store.py's timed kill test).

Each writer stores a known batch, tells the parent through a pipe, then writes forever;
the parent kills it at once. Wherever the kill lands (between records, inside a
header, inside a payload), a fresh reader must serve every record of the known batch,
serve exactly the right bytes for anything else it reports present, and count one
segment per writer. Torn prefixes cut at chosen bytes are covered exhaustively by
tests/test_store_power_loss.py; this test keeps a real kill of a real writer.
"""
from __future__ import annotations

import os
import select
import signal

import pytest
import torch

from store_helpers import check_served, items_for, keys_for
from torchcache_c._C import Store

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

WRITERS, KNOWN, NUMEL = 12, 16, 16384  # 128 KiB items: a kill often lands mid-payload


def _writer(path: str, index: int, ready: int) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
    store = Store(path, refresh_ms=0)
    known = keys_for(range(KNOWN), salt=10_000 + index)
    store.put(known, items_for(known, NUMEL))
    os.write(ready, b"k")
    salt = 0
    while True:  # until killed
        for start in range(0, 64, 16):
            keys = keys_for(range(start, start + 16), salt)
            store.put(keys, items_for(keys, NUMEL))
        salt += 1


def _fork_and_kill(path: str, index: int) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _writer(path, index, w)
        finally:
            os._exit(1)
    os.close(w)
    try:
        readable, _, _ = select.select([r], [], [], 60)
        got = os.read(r, 1) if readable else b""
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert got == b"k", "the writer did not store its known batch within 60 s"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_killed_writers_keep_what_they_wrote_and_never_serve_torn_records(tmp_path):
    for i in range(WRITERS):
        _fork_and_kill(str(tmp_path), i)
    assert len(list(tmp_path.glob("seg-*.tcs"))) == WRITERS  # one segment per writer
    with Store(str(tmp_path)) as store:
        for i in range(WRITERS):  # everything stored before the signal is served, exactly
            assert check_served(store, keys_for(range(KNOWN), salt=10_000 + i), NUMEL) == KNOWN
        for salt in range(200):  # whatever else is present is exactly what was written
            check_served(store, keys_for(range(64), salt), NUMEL)
