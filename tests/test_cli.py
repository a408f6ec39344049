"""python -m torchcache_c info|verify|clear DIR (torchcache_c/cli.py, docs/cli.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchcache_c import cli
from torchcache_c._C import Store

RECORD_HEADER = 128


def make_module_dir(path: Path, n: int, numel: int = 16, layout: bool = True) -> Path:
    """A module-key directory as the decorator lays it out: one segment, one layout."""
    store = Store(str(path))
    ids = torch.arange(n, dtype=torch.int64)
    keys = torch.stack([ids, ids + 1000], dim=1).contiguous()
    store.put(keys, torch.arange(n * numel, dtype=torch.float32).reshape(n, numel))
    store.close()
    if layout:
        (path / "layout-0123abcd.json").write_text('{"format": "torchcache_c-layout-1"}')
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A cache root with two module keys of 5 and 3 records."""
    r = tmp_path / "cache"
    make_module_dir(r / "aaaa", 5)
    make_module_dir(r / "bbbb", 3)
    return r


def run(capsys, *argv: str):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def segment_of(module: Path) -> Path:
    (seg,) = module.glob("seg-*.tcs")
    return seg


def test_info_counts_entries_segments_layouts_per_module_and_totals(root, capsys):
    code, out, _ = run(capsys, "info", "--json", str(root))
    assert code == 0
    data = json.loads(out)
    by_key = {m["module_key"]: m for m in data["modules"]}
    assert by_key["aaaa"]["entries"] == 5 and by_key["bbbb"]["entries"] == 3
    assert all(m["segments"] == 1 and m["layouts"] == 1 and m["corrupt"] == 0
               for m in data["modules"])
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert data["totals"] == {"entries": 8, "bytes": on_disk, "segments": 2, "corrupt": 0,
                              "layouts": 2}


def test_info_table_names_every_module_and_the_total(root, capsys):
    code, out, _ = run(capsys, "info", str(root))
    assert code == 0
    assert "aaaa" in out and "bbbb" in out
    total = [line for line in out.splitlines() if line.startswith("total")]
    assert total and total[0].split()[1] == "8"


def test_info_accepts_one_module_key_directory(root, capsys):
    code, out, _ = run(capsys, "info", "--json", str(root / "bbbb"))
    assert code == 0
    (m,) = json.loads(out)["modules"]
    assert m["module_key"] == "bbbb" and m["entries"] == 3


def test_info_counts_a_record_with_a_damaged_header_as_corrupt(root, capsys):
    seg = segment_of(root / "aaaa")
    data = bytearray(seg.read_bytes())
    data[8] ^= 1  # the first record's key: its header checksum fails
    seg.write_bytes(bytes(data))
    code, out, _ = run(capsys, "info", "--json", str(root / "aaaa"))
    (m,) = json.loads(out)["modules"]
    assert code == 0 and m["entries"] == 4 and m["corrupt"] == 1


def test_verify_passes_an_intact_cache(root, capsys):
    code, out, _ = run(capsys, "verify", str(root))
    assert code == 0 and out.rstrip().endswith("OK")


def test_verify_finds_a_flipped_payload_byte_and_exits_1(root, capsys):
    seg = segment_of(root / "bbbb")
    data = bytearray(seg.read_bytes())
    record = len(data) // 3
    data[record + RECORD_HEADER + 5] ^= 0x40  # second record's payload
    seg.write_bytes(bytes(data))
    # A payload is checked at first use only, so opening does not see it; verify must.
    code, out, _ = run(capsys, "info", "--json", str(root))
    assert json.loads(out)["totals"]["corrupt"] == 0
    code, out, _ = run(capsys, "verify", "--json", str(root))
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False
    (bad,) = [m for m in data["modules"] if m["corrupt"]]
    assert bad["module_key"] == "bbbb" and bad["records"] == 2
    assert bad["problems"] == [{"segment": seg.name, "offset": record,
                                "reason": "payload checksum mismatch"}]
    code, out, _ = run(capsys, "verify", str(root))
    assert code == 1 and f"{seg.name} @ {record}: payload checksum mismatch" in out


def test_verify_reports_a_torn_tail_without_failing(root, capsys):
    seg = segment_of(root / "aaaa")
    seg.write_bytes(seg.read_bytes()[:-10])
    code, out, _ = run(capsys, "verify", "--json", str(root / "aaaa"))
    (m,) = json.loads(out)["modules"]
    assert code == 0 and m["records"] == 4 and m["torn"] == 1 and m["corrupt"] == 0


def test_clear_removes_only_our_files_and_the_emptied_directories(root, capsys):
    (root / "aaaa" / ".layout-ff.json.12.34.tmp").write_text("{}")  # an interrupted write
    code, out, _ = run(capsys, "clear", "--yes", str(root))
    assert code == 0, out
    assert root.is_dir() and list(root.iterdir()) == []


def test_clear_refuses_a_directory_with_foreign_files(root, capsys):
    (root / "aaaa" / "notes.txt").write_text("mine")
    (root / "other").mkdir()
    (root / "other" / "data.bin").write_bytes(b"x")
    before = sorted(p for p in root.rglob("*"))
    code, _, err = run(capsys, "clear", "--yes", str(root))
    assert code == 2
    assert "notes.txt" in err and "other" in err and "--force" in err
    assert "Traceback" not in err
    assert sorted(p for p in root.rglob("*")) == before


def test_clear_force_leaves_foreign_files_in_place(root, capsys):
    (root / "aaaa" / "notes.txt").write_text("mine")
    code, _, _ = run(capsys, "clear", "--yes", "--force", str(root))
    assert code == 0
    assert [p.relative_to(root) for p in root.rglob("*")] == [Path("aaaa"),
                                                              Path("aaaa/notes.txt")]
    assert (root / "aaaa" / "notes.txt").read_text() == "mine"


def test_clear_never_follows_symlinks(root, tmp_path, capsys):
    outside = make_module_dir(tmp_path / "outside", 2)
    (root / "aaaa" / "seg-link-1-00.tcs").symlink_to(segment_of(outside))
    (root / "linked").symlink_to(outside)
    code, _, err = run(capsys, "clear", "--yes", str(root))
    assert code == 2 and "seg-link-1-00.tcs" in err and "linked" in err
    code, _, _ = run(capsys, "clear", "--yes", "--force", str(root))
    assert code == 0
    assert len(list(outside.iterdir())) == 2  # the link targets are untouched
    code, _, err = run(capsys, "clear", "--yes", str(root / "linked"))
    assert code == 2 and "symbolic link" in err


def test_clear_without_a_tty_requires_yes(root, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    code, _, err = run(capsys, "clear", str(root))
    assert code == 2 and "--yes" in err
    assert len(list(root.rglob("seg-*.tcs"))) == 2


def test_clear_on_a_tty_asks_and_keeps_everything_unless_confirmed(root, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    code, out, err = run(capsys, "clear", str(root))
    assert code == 0 and "[y/N]" in err and "nothing removed" in out
    assert len(list(root.rglob("seg-*.tcs"))) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    code, _, _ = run(capsys, "clear", str(root))
    assert code == 0 and list(root.rglob("*")) == []


@pytest.mark.parametrize("command", ["info", "verify", "clear"])
def test_missing_directory_is_an_error_with_exit_2(tmp_path, capsys, command):
    code, out, err = run(capsys, command, "--yes" if command == "clear" else "--json",
                         str(tmp_path / "missing"))
    assert code == 2 and out == "" and "no such directory" in err


def test_a_directory_that_is_not_a_cache_is_an_error(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    code, _, err = run(capsys, "info", str(tmp_path))
    assert code == 2 and "not a torchcache_c cache" in err
    assert (tmp_path / "a.txt").exists()


def test_python_dash_m_runs_the_cli_without_traceback(root, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(cli.__file__).parents[1]))
    ok = subprocess.run([sys.executable, "-m", "torchcache_c", "info", "--json", str(root)],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and json.loads(ok.stdout)["totals"]["entries"] == 8
    bad = subprocess.run([sys.executable, "-m", "torchcache_c", "verify", str(tmp_path / "no")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "no such" in bad.stderr


def test_cli_starts_without_importing_torch():
    import subprocess
    import sys

    code = "import sys, torchcache_c.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
