"""Compaction (issue 12; docs/multiprocess.md, "Compaction"): the segments of
writers that are gone merge into one, every verified record stays served, a
live writer's segment is never touched, and readers open meanwhile go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from torchcache_c import _C, cli
from torchcache_c._C import Store

sys.path.insert(0, str(Path(__file__).parent))
from store_helpers import check_served, fork_writer, items_for, keys_for  # noqa: E402

HERE = str(Path(__file__).parent)
NUMEL = 32


def segments(path) -> list:
    return sorted(Path(path).glob("seg-*.tcs"))


def finished_writers(path, count: int, per: int = 20) -> torch.Tensor:
    """count segments from forked writers that have exited (their pids are gone);
    writer p stores ids p*per .. p*per+per-1, and one more stores id 0 again in a
    directory of its own, whose segment is then moved in: a duplicate (records
    are bound to their segment's name, not its directory)."""
    pids = [fork_writer(str(path), p * per, per, per, NUMEL) for p in range(count)]
    scratch = Path(str(path) + ".dup")
    pids.append(fork_writer(str(scratch), 0, 1, 1, NUMEL))
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    (dup,) = segments(scratch)
    os.rename(dup, Path(path) / dup.name)
    scratch.rmdir()
    return keys_for(range(count * per))


def test_compact_merges_finished_writers_into_one_segment(tmp_path):
    keys = finished_writers(tmp_path, 5)
    assert len(segments(tmp_path)) == 6
    stored = Store(str(tmp_path)).verify()["records"]
    r = _C.compact(str(tmp_path))
    assert r["removed"] == 6 and r["kept"] == 0 and r["live"] == 0
    assert r["records"] == 100 and r["records"] + r["duplicates"] == stored
    assert r["dropped"] == 0
    (merged,) = segments(tmp_path)
    assert merged.name == r["merged"]
    store = Store(str(tmp_path))
    assert check_served(store, keys, NUMEL) == 100
    assert store.verify()["corrupt"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_compact_never_touches_a_live_writers_segment(tmp_path):
    keys = finished_writers(tmp_path, 3)
    live = Store(str(tmp_path))  # this process runs: its segment may still grow
    mine = keys_for(range(1000, 1010))
    live.put(mine, items_for(mine, NUMEL))
    (own,) = [p for p in segments(tmp_path) if f"-{os.getpid()}-" in p.name]
    r = _C.compact(str(tmp_path))
    assert r["live"] == 1 and r["removed"] == 4
    assert own.exists() and len(segments(tmp_path)) == 2
    more = keys_for(range(1010, 1020))
    assert live.put(more, items_for(more, NUMEL)) == 10  # still appending to it
    fresh = Store(str(tmp_path))
    assert check_served(fresh, torch.cat([keys, mine, more]), NUMEL) == 80


def test_compact_leaves_damaged_records_out(tmp_path):
    finished_writers(tmp_path, 2)
    victim = max(segments(tmp_path), key=lambda p: p.stat().st_size)
    record = 128 + NUMEL * 8
    with open(victim, "r+b") as f:
        f.seek(3 * record + 128 + 5)
        f.write(b"\xff\xee")
    r = _C.compact(str(tmp_path))
    assert r["dropped"] == 1 and r["records"] == 39
    store = Store(str(tmp_path))
    assert store.verify()["corrupt"] == 0
    assert store.stats()["records"] == 39


def test_readers_open_during_a_compaction_keep_serving(tmp_path):
    keys = finished_writers(tmp_path, 4)
    # RLIMIT_NOFILE=64: the reader caches one descriptor, so it meets the removed
    # segments as gone and must find their records in the merged one.
    code = f"""
import sys, resource
sys.path.insert(0, {HERE!r})
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from store_helpers import keys_for, check_served
from torchcache_c import _C
from torchcache_c._C import Store
s = Store({str(tmp_path)!r}, refresh_ms=0)
keys = keys_for(range(80))
before = check_served(s, keys, {NUMEL})
r = _C.compact({str(tmp_path)!r})
after = check_served(s, keys, {NUMEL})
print(before, r["removed"], after, s.stats()["gone"] >= 1, sum(s.stats()["faults"].values()))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=300).stdout.split()
    assert out == ["80", "5", "80", "True", "0"]
    assert check_served(Store(str(tmp_path)), keys, NUMEL) == 80


def test_compact_with_one_segment_changes_nothing(tmp_path):
    finished_writers(tmp_path, 0)
    before = segments(tmp_path)
    r = _C.compact(str(tmp_path))
    assert r["merged"] is None and r["removed"] == 0 and segments(tmp_path) == before


def test_cli_compact_reports_each_module(tmp_path, capsys):
    finished_writers(tmp_path / "root" / "aaaa", 3)
    code = cli.main(["compact", "--json", str(tmp_path / "root")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    (m,) = out["modules"]
    assert m["removed"] == 4 and m["records"] == 60
    assert len(segments(tmp_path / "root" / "aaaa")) == 1


def test_info_warns_above_a_thousand_segments(tmp_path, capsys):
    with Store(str(tmp_path / "src")) as w:
        w.put(keys_for(range(1001)), items_for(keys_for(range(1001)), 2))
    (seg,) = segments(tmp_path / "src")
    data = seg.read_bytes()
    record = len(data) // 1001
    module = tmp_path / "root" / "aaaa"
    module.mkdir(parents=True)
    for i in range(1001):  # segment files (their records, moved, no longer verify)
        (module / f"seg-other-{i + 1}-{i:016x}.tcs").write_bytes(
            data[i * record:(i + 1) * record])
    assert cli.main(["info", str(tmp_path / "root")]) == 0
    err = capsys.readouterr().err
    assert "1001 segments" in err and "compact" in err
    (module / "seg-other-1-0000000000000000.tcs").unlink()
    assert cli.main(["info", str(tmp_path / "root")]) == 0
    assert "compact" not in capsys.readouterr().err
