"""The supported Python versions are stated once per place, and the places agree:
pyproject.toml (requires-python, classifiers, ruff's target-version), the C code's
PY_VERSION_HEX guard, and the README."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def c_minimum() -> tuple[int, int]:
    """The version below which csrc refuses to build (#if PY_VERSION_HEX < 0x....)."""
    guards = re.findall(r"#\s*if\s+PY_VERSION_HEX\s*<\s*0x([0-9A-Fa-f]{8})\s*\n\s*#\s*error",
                        (ROOT / "csrc" / "module.c").read_text())
    assert len(guards) == 1, "csrc/module.c should hold one `#if PY_VERSION_HEX < ...` #error"
    hexversion = int(guards[0], 16)
    return hexversion >> 24, (hexversion >> 16) & 0xFF


def requires_minimum() -> tuple[int, int]:
    spec = pyproject()["project"]["requires-python"]
    m = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)\s*", spec)
    assert m, f"requires-python {spec!r} should be a plain lower bound like '>=3.10'"
    return int(m.group(1)), int(m.group(2))


def test_requires_python_matches_the_c_guard():
    assert requires_minimum() == c_minimum()


def test_the_c_guard_covers_the_c_api_in_use():
    # Py_NewRef / Py_XNewRef appeared in CPython 3.10.
    uses = [p.name for p in (ROOT / "csrc").glob("*.c")
            if re.search(r"\bPy_X?NewRef\b", p.read_text())]
    if uses:
        assert c_minimum() >= (3, 10), f"{uses} use Py_NewRef (3.10+)"


def test_this_interpreter_is_supported():
    assert sys.version_info[:2] >= requires_minimum()


def test_classifiers_start_at_the_minimum_and_skip_nothing():
    minor = sorted(int(c.rsplit(".", 1)[1]) for c in pyproject()["project"]["classifiers"]
                   if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    major, lowest = requires_minimum()
    assert major == 3 and minor and minor[0] == lowest
    assert minor == list(range(lowest, minor[-1] + 1))


def test_ruff_targets_the_minimum():
    major, minor = requires_minimum()
    assert pyproject()["tool"]["ruff"]["target-version"] == f"py{major}{minor}"


def test_readme_names_the_minimum():
    major, minor = requires_minimum()
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert f"Python {major}.{minor} or newer" in setup
