"""module.json (torchcache_c/meta.py), `info`'s class and time columns, and `prune`
(torchcache_c/cli.py, docs/cli.md)."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn as nn

from torchcache_c import cli, meta, torchcache

DAY = 86400.0


# ---- helpers ---------------------------------------------------------------------

def encoder_class(root: Path) -> type:
    @torchcache(persistent=True, persistent_cache_dir=str(root))
    class Encoder(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.lin = nn.Linear(4, width)
            self.requires_grad_(False)

        def forward(self, x):
            return self.lin(x)

    return Encoder


QUALNAME = f"{__name__}.encoder_class.<locals>.Encoder"


def real_module_dir(root: Path, width: int, items: int) -> Path:
    """A module-key directory written by the real decorator: `items` outputs of
    `width` floats each, so a larger width and more items make a larger directory."""
    before = set(root.iterdir()) if root.exists() else set()
    m = encoder_class(root)(width)
    x = torch.randn(items, 4, generator=torch.Generator().manual_seed(width))
    with torch.no_grad():
        m(x)
    (path,) = set(root.iterdir()) - before
    assert any(path.glob("seg-*.tcs"))
    return path


def set_last_used(path: Path, days_ago: float, qualname: str = QUALNAME) -> float:
    """module.json says `path` was last used `days_ago` days ago."""
    when = time.time() - days_ago * DAY
    assert meta.touch_module_dir(path, qualname=qualname, module_key=path.name, now=when,
                                 min_interval=0)
    return when


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def snapshot(root: Path) -> Dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def run(capsys, *argv: str):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def caches(tmp_path: Path) -> List[Path]:
    """Four real module-key directories under tmp_path/cache, last used 1, 10, 40 and
    100 days ago; their sizes differ."""
    root = tmp_path / "cache"
    dirs = [real_module_dir(root, width, items)
            for width, items in ((3, 4), (8, 6), (16, 8), (32, 10))]
    for d, days in zip(dirs, (1, 10, 40, 100), strict=True):
        set_last_used(d, days)
    assert len({d.name for d in dirs}) == 4 and len({size(d) for d in dirs}) == 4
    return dirs


def remaining(root: Path) -> List[str]:
    return sorted(p.name for p in root.iterdir())


# ---- module.json -----------------------------------------------------------------

def test_touch_writes_module_json_and_read_returns_it(tmp_path):
    d = tmp_path / "k1"
    assert meta.touch_module_dir(d, qualname="pkg.mod.Enc", module_key="k1", now=1000.5,
                                 min_interval=0)
    assert os.listdir(d) == ["module.json"]
    assert meta.read_module_meta(d) == {"format": "torchcache_c-module-1",
                                        "qualname": "pkg.mod.Enc", "module_key": "k1",
                                        "created": 1000.5, "last_used": 1000.5}
    assert json.loads((d / "module.json").read_text())["last_used"] == 1000.5


def test_a_later_touch_moves_last_used_and_keeps_created(tmp_path):
    meta.touch_module_dir(tmp_path, qualname="a.B", module_key="k", now=2000, min_interval=0)
    meta.touch_module_dir(tmp_path, qualname="a.B", module_key="k", now=5000, min_interval=0)
    got = meta.read_module_meta(tmp_path)
    assert got is not None and got["created"] == 2000 and got["last_used"] == 5000
    # An earlier time (a test, or a clock set back) is taken as it is.
    meta.touch_module_dir(tmp_path, qualname="a.B", module_key="k", now=100, min_interval=0)
    got = meta.read_module_meta(tmp_path)
    assert got is not None and got["created"] == 100 and got["last_used"] == 100


def test_touch_defaults_to_the_current_time(tmp_path):
    before = time.time()
    assert meta.touch_module_dir(tmp_path, qualname="a.B", module_key="k", min_interval=0)
    got = meta.read_module_meta(tmp_path)
    assert got is not None and before <= got["last_used"] <= time.time()


def test_repeated_touch_within_min_interval_does_not_touch_the_disk(tmp_path):
    d = tmp_path / "k"
    assert meta.touch_module_dir(d, qualname="a.B", module_key="k", now=10, min_interval=60)
    first = (d / "module.json").read_bytes()
    assert not meta.touch_module_dir(d, qualname="a.B", module_key="k", now=20,
                                     min_interval=60)
    assert (d / "module.json").read_bytes() == first
    # Not even the directory is looked at: removed, it is not created again.
    (d / "module.json").unlink()
    d.rmdir()
    assert not meta.touch_module_dir(d, qualname="a.B", module_key="k", min_interval=60)
    assert not d.exists()
    assert meta.touch_module_dir(d, qualname="a.B", module_key="k", now=30, min_interval=0)
    assert meta.read_module_meta(d)["last_used"] == 30


def test_many_writes_leave_no_temporary_file(tmp_path):
    for i in range(50):
        assert meta.touch_module_dir(tmp_path, qualname="a.B", module_key="k", now=i,
                                     min_interval=0)
    assert os.listdir(tmp_path) == ["module.json"]


def test_a_link_planted_at_module_json_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "k"
    d.mkdir()
    (d / "module.json").symlink_to(victim)
    assert meta.read_module_meta(d) is None  # reading does not follow it either
    assert meta.touch_module_dir(d, qualname="a.B", module_key="k", now=7, min_interval=0)
    assert victim.read_text() == "precious"
    assert not (d / "module.json").is_symlink()
    assert meta.read_module_meta(d)["last_used"] == 7


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "k"
    d.mkdir()
    (d / f".module.json.{os.getpid()}.deadbeef.tmp").symlink_to(victim)
    (d / f".module.json.{os.getpid()}.0badf00d.tmp").symlink_to(tmp_path / "dangling")
    names = iter(["deadbeef", "0badf00d", "c0ffee00"])
    monkeypatch.setattr(meta.secrets, "token_hex", lambda n: next(names))
    assert meta.touch_module_dir(d, qualname="a.B", module_key="k", now=7, min_interval=0)
    assert victim.read_text() == "precious" and not (tmp_path / "dangling").exists()
    assert meta.read_module_meta(d)["last_used"] == 7
    assert sorted(os.listdir(d)) == sorted(["module.json", f".module.json.{os.getpid()}"
                                            ".deadbeef.tmp", f".module.json.{os.getpid()}"
                                            ".0badf00d.tmp"])


def test_a_module_directory_that_is_a_link_is_not_written(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "k").symlink_to(target)
    assert not meta.touch_module_dir(tmp_path / "k", qualname="a.B", module_key="k",
                                     min_interval=0)
    assert os.listdir(target) == []
    assert meta.read_module_meta(tmp_path / "k") is None


def test_io_errors_return_false_and_never_raise(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the parent directory should be
    with caplog.at_level("DEBUG", logger="torchcache_c"):
        assert not meta.touch_module_dir(blocker / "k", qualname="a.B", module_key="k",
                                         min_interval=0)
    assert "module.json" in caplog.text

    def no_replace(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(meta.os, "replace", no_replace)
    assert not meta.touch_module_dir(tmp_path / "k", qualname="a.B", module_key="k",
                                     min_interval=0)
    assert os.listdir(tmp_path / "k") == []  # the temporary file was removed
    # Bad values are no reason to break a training step either.
    assert not meta.touch_module_dir(tmp_path / "k", qualname="", module_key="k",
                                     min_interval=0)


@pytest.mark.parametrize("text", [
    "", "not json", "[]", "null", '{"format": "torchcache_c-module-1"}',
    '{"format": "other", "qualname": "a.B", "module_key": "k", "created": 1, "last_used": 2}',
    '{"format": "torchcache_c-module-1", "qualname": 5, "module_key": "k", "created": 1, '
    '"last_used": 2}',
    '{"format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k", '
    '"created": "yesterday", "last_used": 2}',
    '{"format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k", '
    '"created": 1, "last_used": true}',
    '{"format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k", '
    '"created": 1, "last_used": -5}',
    '{"format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "", '
    '"created": 1, "last_used": 2}',
    '{"format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k", '
    '"created": 1, "last_used": NaN}',
    '{"format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k", '
    '"created": 1, "last_used": 1' + "0" * 400 + '}',
    '{"format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k", '
    '"created": 1, "last_used": 1e999}',
    b"\xff\xfe".decode("latin-1"),
])
def test_invalid_module_json_reads_as_none(tmp_path, text):
    (tmp_path / "module.json").write_text(text, encoding="latin-1")
    assert meta.read_module_meta(tmp_path) is None


def test_missing_module_json_reads_as_none_and_extra_keys_are_ignored(tmp_path):
    assert meta.read_module_meta(tmp_path) is None
    assert meta.read_module_meta(tmp_path / "missing") is None
    (tmp_path / "module.json").write_text(json.dumps({
        "format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k",
        "created": 1, "last_used": 2, "future": [1]}))
    assert meta.read_module_meta(tmp_path) == {
        "format": "torchcache_c-module-1", "qualname": "a.B", "module_key": "k",
        "created": 1.0, "last_used": 2.0}


def test_qualname_of_names_classes_functions_and_instances():
    assert meta.qualname_of(encoder_class(Path("unused"))) == QUALNAME
    assert meta.qualname_of(real_module_dir) == f"{__name__}.real_module_dir"
    assert meta.qualname_of(io.StringIO()) == "_io.StringIO"


# ---- the CLI recognises module.json ------------------------------------------------

def test_clear_removes_module_json_and_its_temporary_files(tmp_path, capsys):
    d = real_module_dir(tmp_path / "cache", 3, 2)
    set_last_used(d, 1)
    (d / ".module.json.123.abcdef01.tmp").write_text("{")  # an interrupted write
    code, out, err = run(capsys, "clear", "--yes", str(tmp_path / "cache"))
    assert code == 0, err
    assert os.listdir(tmp_path / "cache") == []


def test_a_directory_with_only_module_json_is_a_module_key(tmp_path, capsys):
    meta.touch_module_dir(tmp_path / "cache" / "k", qualname="a.B", module_key="k", now=5,
                          min_interval=0)
    code, out, err = run(capsys, "info", "--json", str(tmp_path / "cache"))
    assert code == 0, err
    (m,) = json.loads(out)["modules"]
    assert m["module_key"] == "k" and m["entries"] == 0 and m["qualname"] == "a.B"
    assert os.listdir(tmp_path / "cache" / "k") == ["module.json"]  # info wrote nothing


# ---- info --------------------------------------------------------------------------

def test_info_names_the_class_and_the_creation_and_last_use_times(tmp_path, capsys):
    root = tmp_path / "cache"
    d = real_module_dir(root, 3, 4)
    meta.touch_module_dir(d, qualname=QUALNAME, module_key=d.name, now=1_700_000_000,
                          min_interval=0)
    meta.touch_module_dir(d, qualname=QUALNAME, module_key=d.name, now=1_700_086_400.25,
                          min_interval=0)
    code, out, _ = run(capsys, "info", "--json", str(root))
    assert code == 0
    (m,) = json.loads(out)["modules"]
    created = datetime.fromtimestamp(1_700_000_000).astimezone().isoformat(timespec="seconds")
    used = datetime.fromtimestamp(1_700_086_400).astimezone().isoformat(timespec="seconds")
    assert m["qualname"] == QUALNAME
    assert m["created"] == 1_700_000_000 and m["last_used"] == 1_700_086_400.25
    assert m["created_iso"] == created and m["last_used_iso"] == used
    assert m["bytes"] == size(d)  # module.json counts: it is ours
    code, out, _ = run(capsys, "info", str(root))
    row = next(line for line in out.splitlines() if line.startswith(d.name))
    assert QUALNAME in row and created in row and used in row
    assert row.index(used) < row.index(created) < row.index(QUALNAME)


def test_info_shows_a_dash_without_module_json(tmp_path, capsys):
    root = tmp_path / "cache"
    d = real_module_dir(root, 3, 4)
    (d / "module.json").unlink(missing_ok=True)  # an old cache
    bad = real_module_dir(root, 5, 4)
    (bad / "module.json").write_text("{broken")
    code, out, _ = run(capsys, "info", "--json", str(root))
    assert code == 0
    modules = json.loads(out)["modules"]
    assert {m["module_key"] for m in modules} == {d.name, bad.name}
    for m in modules:
        assert m["qualname"] is None and m["created"] is None and m["last_used"] is None
        assert m["created_iso"] is None and m["last_used_iso"] is None
    code, out, _ = run(capsys, "info", str(root))
    for key in (d.name, bad.name):
        row = next(line for line in out.splitlines() if line.startswith(key))
        assert row.split()[-3:] == ["-", "-", "-"]


def test_a_module_json_that_is_not_ours_is_a_foreign_file(tmp_path, capsys):
    # "module.json" is a common name: only valid torchcache_c metadata counts as ours.
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "module.json").write_text('{"name": "my module"}')
    code, _, err = run(capsys, "clear", "--yes", str(project))
    assert code == 2 and "not a torchcache_c cache" in err
    d = real_module_dir(tmp_path / "cache", 3, 4)
    (d / "module.json").write_text('{"name": "my module"}')
    code, _, err = run(capsys, "clear", "--yes", str(tmp_path / "cache"))
    assert code == 2 and "module.json" in err and "--force" in err
    code, _, err = run(capsys, "clear", "--yes", "--force", str(tmp_path / "cache"))
    assert code == 0 and os.listdir(d) == ["module.json"]
    assert (project / "pkg" / "module.json").exists()


# ---- prune -------------------------------------------------------------------------

def test_prune_without_a_rule_says_which_to_pass(caches, capsys):
    root = caches[0].parent
    before = snapshot(root)
    for extra in ([], ["--keep", "2"], ["--dry-run"]):
        code, out, err = run(capsys, "prune", "--yes", *extra, str(root))
        assert code == 2 and out == ""
        assert "--older-than" in err and "--max-size" in err and "Traceback" not in err
    assert snapshot(root) == before


def test_prune_older_than_removes_whole_directories_not_used_for_that_long(caches, capsys):
    root = caches[0].parent
    freed = size(caches[2]) + size(caches[3])
    code, out, err = run(capsys, "prune", "--older-than", "30", "--yes", str(root))
    assert code == 0, err
    assert remaining(root) == sorted([caches[0].name, caches[1].name])
    assert caches[2].name in out and caches[3].name in out and QUALNAME in out
    assert "freed" in out and f"({freed} bytes)" in out


def test_prune_max_size_removes_least_recently_used_first(caches, capsys):
    root = caches[0].parent
    total, oldest = sum(size(d) for d in caches), size(caches[3])
    # Enough room for all but the oldest (100 days) one.
    code, out, err = run(capsys, "prune", "--max-size", str(total - oldest),
                         "--yes", "--json", str(root))
    assert code == 0, err
    data = json.loads(out)
    assert [m["module_key"] for m in data["removed"]] == [caches[3].name]
    assert data["removed"][0]["rule"] == "max-size"
    assert data["bytes_before"] == total and data["bytes_freed"] == oldest
    assert data["bytes_after"] == total - oldest
    assert remaining(root) == sorted(d.name for d in caches[:3])
    # One byte less: the next least recently used goes too, the two newest stay.
    code, out, _ = run(capsys, "prune", "--max-size", str(size(caches[0]) + size(caches[1])),
                       "--yes", "--json", str(root))
    assert [m["module_key"] for m in json.loads(out)["removed"]] == [caches[2].name]
    assert remaining(root) == sorted(d.name for d in caches[:2])


def test_prune_order_follows_last_used_not_names_or_file_times(tmp_path, capsys):
    root = tmp_path / "cache"
    dirs = [real_module_dir(root, w, 4) for w in (3, 5, 7)]
    # The first written is the most recently used, so file times point the other way.
    for d, days in zip(dirs, (1, 2, 3), strict=True):
        set_last_used(d, days)
    for d, days in zip(dirs, (30, 20, 10), strict=True):
        for f in d.iterdir():
            os.utime(f, (time.time() - days * DAY,) * 2)
    code, out, _ = run(capsys, "prune", "--max-size", "0", "--dry-run", "--json", str(root))
    assert code == 0
    assert [m["module_key"] for m in json.loads(out)["removed"]] == [d.name for d in
                                                                     reversed(dirs)]
    assert all(m["last_used_from"] == "module.json" for m in json.loads(out)["removed"])


def test_prune_falls_back_to_the_newest_file_time_without_module_json(tmp_path, capsys):
    root = tmp_path / "cache"
    dirs = [real_module_dir(root, w, 4) for w in (3, 5, 7)]
    (dirs[2] / "module.json").unlink(missing_ok=True)
    (dirs[1] / "module.json").unlink(missing_ok=True)
    set_last_used(dirs[0], 50)  # module.json wins over fresh file times
    for d, days in zip(dirs[1:], (40, 5), strict=True):
        files = sorted(d.iterdir())
        for i, f in enumerate(files):  # the newest file decides
            os.utime(f, (time.time() - (days + 10 * i) * DAY,) * 2)
    code, out, err = run(capsys, "prune", "--older-than", "30", "--yes", "--json", str(root))
    assert code == 0, err
    data = json.loads(out)
    assert [m["module_key"] for m in data["removed"]] == [dirs[0].name, dirs[1].name]
    assert [m["last_used_from"] for m in data["removed"]] == ["module.json", "mtime"]
    assert data["kept"][0]["module_key"] == dirs[2].name
    assert data["kept"][0]["last_used_from"] == "mtime"
    assert remaining(root) == [dirs[2].name]


def test_prune_keep_protects_the_most_recently_used(caches, capsys):
    root = caches[0].parent
    code, out, err = run(capsys, "prune", "--older-than", "0", "--keep", "2", "--yes",
                         str(root))
    assert code == 0, err
    assert remaining(root) == sorted([caches[0].name, caches[1].name])
    code, out, err = run(capsys, "prune", "--max-size", "0", "--keep", "1", "--yes",
                         str(root))
    assert code == 0, err
    assert remaining(root) == [caches[0].name]
    assert "note:" in out and "--keep 1" in out and "--max-size" in out


def test_prune_rules_combine(caches, capsys):
    root = caches[0].parent
    # --older-than 30 picks the 40 and 100 day ones, but --keep 3 protects the 40 day
    # one, and keeps more than --max-size allows (said in a note).  Then with --keep 1,
    # --older-than takes the 40 day one and --max-size the least recently used of the
    # unprotected rest.
    limit = size(caches[0]) + size(caches[1]) - 1
    code, out, err = run(capsys, "prune", "--older-than", "30", "--keep", "3", "--max-size",
                         str(limit), "--yes", "--json", str(root))
    assert code == 0, err
    data = json.loads(out)
    assert [(m["module_key"], m["rule"]) for m in data["removed"]] == [
        (caches[3].name, "older-than")]
    assert data["note"] and remaining(root) == sorted(d.name for d in caches[:3])
    code, out, err = run(capsys, "prune", "--older-than", "30", "--keep", "1", "--max-size",
                         str(limit), "--yes", "--json", str(root))
    data = json.loads(out)
    assert [(m["module_key"], m["rule"]) for m in data["removed"]] == [
        (caches[2].name, "older-than"), (caches[1].name, "max-size")]
    assert data["note"] is None and remaining(root) == [caches[0].name]
    assert data["bytes_after"] == size(caches[0]) <= limit


def test_prune_dry_run_changes_nothing_and_needs_no_yes(caches, capsys, monkeypatch):
    root = caches[0].parent
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    before = snapshot(root)
    code, out, err = run(capsys, "prune", "--older-than", "30", "--dry-run", str(root))
    assert code == 0, err
    assert "would remove" in out and caches[3].name in out and "nothing was changed" in out
    assert f"({size(caches[2]) + size(caches[3])} bytes)" in out
    code, out, _ = run(capsys, "prune", "--max-size", "0", "--dry-run", "--json", str(root))
    data = json.loads(out)
    assert data["dry_run"] is True and len(data["removed"]) == 4
    assert data["bytes_freed"] == sum(size(d) for d in caches)
    assert snapshot(root) == before


def test_prune_without_a_tty_requires_yes(caches, capsys, monkeypatch):
    root = caches[0].parent
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    before = snapshot(root)
    code, _, err = run(capsys, "prune", "--older-than", "30", str(root))
    assert code == 2 and "--yes" in err
    assert snapshot(root) == before


def test_prune_on_a_tty_asks_first(caches, capsys, monkeypatch):
    root = caches[0].parent
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    code, out, err = run(capsys, "prune", "--older-than", "30", str(root))
    assert code == 0 and "[y/N]" in err and "nothing removed" in out
    assert len(remaining(root)) == 4
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    code, out, err = run(capsys, "prune", "--older-than", "30", str(root))
    assert code == 0 and len(remaining(root)) == 2


def test_prune_refuses_directories_with_foreign_files_unless_forced(caches, capsys):
    root = caches[0].parent
    (caches[3] / "notes.txt").write_text("mine")
    (caches[0] / "other.txt").write_text("mine too")  # not selected: no reason to refuse
    before = snapshot(root)
    code, out, err = run(capsys, "prune", "--older-than", "30", "--yes", str(root))
    assert code == 2 and "notes.txt" in err and "--force" in err and "other.txt" not in err
    assert snapshot(root) == before
    code, out, err = run(capsys, "prune", "--older-than", "30", "--yes", "--force",
                         "--json", str(root))
    assert code == 0, err
    data = json.loads(out)
    assert [m["module_key"] for m in data["removed"]] == [caches[2].name]
    assert [m["module_key"] for m in data["left"]] == [caches[3].name]
    assert "did not write" in data["left"][0]["why"]
    assert os.listdir(caches[3]) == ["notes.txt"]
    assert (caches[3] / "notes.txt").read_text() == "mine"
    assert data["bytes_freed"] == before_size(before, caches[2]) + before_size(
        before, caches[3]) - len("mine")


def before_size(snap: Dict[str, tuple], d: Path) -> int:
    return sum(v[0] for k, v in snap.items() if k.startswith(d.name + "/"))


def test_prune_never_follows_links(caches, tmp_path, capsys):
    root = caches[0].parent
    outside = real_module_dir(tmp_path / "outside", 64, 2)
    set_last_used(outside, 365)
    (root / "linked").symlink_to(outside)
    code, out, err = run(capsys, "prune", "--older-than", "30", "--yes", "--json", str(root))
    assert code == 0, err
    assert "linked" not in {m["module_key"] for m in json.loads(out)["removed"]}
    assert (root / "linked").is_symlink() and any(outside.glob("seg-*.tcs"))
    code, _, err = run(capsys, "prune", "--older-than", "0", "--yes", str(root / "linked"))
    assert code == 2 and "symbolic link" in err


def test_prune_wants_a_cache_root(caches, capsys):
    code, _, err = run(capsys, "prune", "--older-than", "0", "--yes", str(caches[0]))
    assert code == 2 and "module-key directory" in err and "clear" in err
    assert any(caches[0].glob("seg-*.tcs"))


def test_prune_leaves_a_directory_a_writer_refills_and_says_so(caches, capsys, monkeypatch):
    root = caches[0].parent
    remove_files = cli._remove_files

    def with_a_writer(m):
        got = remove_files(m)
        (m.path / "seg-new-1-00.tcs").write_bytes(b"x" * 10)  # a writer started a segment
        return got

    monkeypatch.setattr(cli, "_remove_files", with_a_writer)
    code, out, err = run(capsys, "prune", "--older-than", "30", "--yes", str(root))
    assert code == 0, err
    assert "new files appeared" in out
    assert sorted(os.listdir(caches[3])) == ["seg-new-1-00.tcs"]
    assert sorted(os.listdir(caches[2])) == ["seg-new-1-00.tcs"]


def test_prune_skips_a_directory_used_again_after_the_scan(caches, capsys, monkeypatch):
    root = caches[0].parent
    plan = cli._plan_prune

    def used_meanwhile(*args, **kwargs):
        got = plan(*args, **kwargs)
        set_last_used(caches[3], 0)  # a process opened it between scan and removal
        return got

    monkeypatch.setattr(cli, "_plan_prune", used_meanwhile)
    before = sorted(os.listdir(caches[3]))
    code, out, err = run(capsys, "prune", "--older-than", "30", "--yes", "--json", str(root))
    assert code == 0, err
    data = json.loads(out)
    assert [m["module_key"] for m in data["removed"]] == [caches[2].name]
    assert [m["module_key"] for m in data["left"]] == [caches[3].name]
    assert "used again" in data["left"][0]["why"]
    assert sorted(os.listdir(caches[3])) == before


@pytest.mark.parametrize("text, expected", [
    ("123", 123), ("0", 0), ("500M", 500 * 2 ** 20), ("10G", 10 * 2 ** 30),
    ("10g", 10 * 2 ** 30), ("1.5K", 1536), ("2GiB", 2 * 2 ** 30), ("3TB", 3 * 2 ** 40),
    ("7B", 7), (" 4 M ", 4 * 2 ** 20),
])
def test_sizes_accept_suffixes(text, expected):
    assert cli.parse_size(text) == expected


@pytest.mark.parametrize("option, value", [
    ("--max-size", "ten"), ("--max-size", "-1"), ("--max-size", "5X"),
    ("--older-than", "-2"), ("--older-than", "soon"), ("--older-than", "inf"),
    ("--keep", "-1"), ("--keep", "1.5"),
])
def test_bad_rule_values_exit_2_naming_the_option(caches, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        cli.main(["prune", option, value, "--yes", str(caches[0].parent)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and option in err and repr(value) in err
    assert len(remaining(caches[0].parent)) == 4
