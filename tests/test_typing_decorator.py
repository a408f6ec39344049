"""A type checker sees @torchcache's real keyword signature: a misspelled keyword is
flagged (issue 10). Runs mypy on a two-line snippet; torch itself is not analysed."""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parents[1]


def test_type_checker_flags_a_misspelled_keyword(tmp_path):
    (tmp_path / "snippet.py").write_text(
        "from torchcache_c import torchcache\n"
        "ok = torchcache(persistent=True, max_memory_cache_size=1e9)\n"
        "bad = torchcache(persistant=True)\n")
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\nignore_missing_imports = True\n[mypy-torch.*]\nfollow_imports = skip\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-incremental",
         "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    snippet = [line for line in proc.stdout.splitlines() if line.startswith("snippet.py")]
    assert any(line.startswith("snippet.py:3:") and '"persistant"' in line
               for line in snippet), proc.stdout
    assert not any(line.startswith("snippet.py:2:") for line in snippet), proc.stdout
