"""The CUDA kernel image: committed PTX, its stamp, what a build embeds, how it loads.

No GPU is needed.  The load path is exercised with a fake libcuda.so.1
(tests/fake_cuda/fake_libcuda.c) that records the image cuda.c hands to
cuModuleLoadDataEx and fails it with a JIT log; the real JIT is tested on a GPU by
tests/test_cuda.py.  Tests that need the source tree, a C compiler or nvcc skip
without them (the installed-wheel run in CI has none of them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import torchcache_c

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
HERE = Path(__file__).resolve().parent
CC = shutil.which("cc") or shutil.which("gcc")
NVCC = shutil.which("nvcc")

needs_source = pytest.mark.skipif(not (TOOLS / "gen_ptx.py").exists() or
                                  not (ROOT / "setup.py").exists(),
                                  reason="needs the source tree")
needs_cc = pytest.mark.skipif(CC is None, reason="needs a C compiler")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc")


def _gen_ptx(*args, cwd=None):
    return subprocess.run([sys.executable, str(TOOLS / "gen_ptx.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


def _copy_csrc(tmp_path: Path) -> Path:
    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", csrc)
    return csrc


def test_build_info_names_the_embedded_kernel_kinds():
    info = torchcache_c.build_info()
    assert set(info["cuda_kernel_kinds"]) <= {"sass", "ptx"}
    assert info["cuda_kernels"] == bool(info["cuda_kernel_kinds"])


@needs_source
def test_committed_ptx_stamp_matches_the_sources():
    result = _gen_ptx("--check")
    assert result.returncode == 0, result.stderr
    assert "stamp matches" in result.stdout


@needs_source
def test_a_code_change_in_an_included_header_makes_the_ptx_stale(tmp_path):
    csrc = _copy_csrc(tmp_path)
    header = csrc / "hash_internal.h"  # reached only through hash_cuda_common.h
    header.write_text(header.read_text() + "\n#define TC_STAMP_TEST 1\n")
    result = _gen_ptx("--check", "--csrc", str(csrc))
    assert result.returncode == 1
    assert "stale" in result.stderr and "hash_internal.h" in result.stderr


@needs_source
def test_a_comment_or_whitespace_edit_keeps_the_ptx_fresh(tmp_path):
    csrc = _copy_csrc(tmp_path)
    source = csrc / "hash_cuda.cu"
    text = source.read_text().replace("\n", "\n\n", 3)
    source.write_text("/* a new comment, with a \" quote */\n" + text + "// trailing\n")
    result = _gen_ptx("--check", "--csrc", str(csrc))
    assert result.returncode == 0, result.stderr


@needs_source
@needs_nvcc
def test_regenerating_the_ptx_gives_an_equivalent_module():
    result = _gen_ptx("--check-regenerate")
    assert result.returncode == 0, result.stderr
    assert "equivalent" in result.stdout


@needs_source
@needs_nvcc
def test_an_edited_instruction_under_a_valid_stamp_fails_the_regenerate_check(tmp_path):
    csrc = _copy_csrc(tmp_path)
    ptx = csrc / "hash_cuda.ptx"
    lines = ptx.read_text().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if line.lstrip().startswith("xor.b64"))
    lines[target] = lines[target].replace("xor.b64", "or.b64", 1)
    ptx.write_text("".join(lines))
    assert _gen_ptx("--check", "--csrc", str(csrc)).returncode == 0  # the stamp still matches
    result = _gen_ptx("--check-regenerate", "--csrc", str(csrc))
    assert result.returncode == 1
    assert "or.b64" in result.stderr


def _build_without_nvcc(tree: Path, edit=None) -> subprocess.CompletedProcess:
    """Builds the extension in place in a copy of the tree, with nvcc hidden."""
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for name in ("csrc", "tools", "torchcache_c"):
        shutil.copytree(ROOT / name, tree / name,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    if edit:
        edit(tree)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env["TORCHCACHE_C_NO_CUDA"] = "1"
    if NVCC:  # hide it from PATH too, not only through the switch
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                      if not (Path(p) / "nvcc").exists())
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _build_info_of(tree: Path) -> dict:
    code = "import json, torchcache_c; print(json.dumps(torchcache_c.build_info()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def ptx_only_build(tmp_path_factory):
    """The extension built from a copy of the tree as on a machine without nvcc."""
    if not (ROOT / "setup.py").exists() or CC is None:
        pytest.skip("needs the source tree and a C compiler")
    tree = tmp_path_factory.mktemp("ptx_only")
    result = _build_without_nvcc(tree)
    assert "embedding the PTX only" in result.stderr
    return tree


@needs_source
@needs_cc
@pytest.mark.slow
def test_a_build_without_nvcc_never_embeds_a_stale_ptx(tmp_path):
    def change_the_kernel_source(tree):
        source = tree / "csrc" / "hash_cuda.cu"
        source.write_text(source.read_text() + "\n#define TC_STALE_TEST 1\n")

    result = _build_without_nvcc(tmp_path, change_the_kernel_source)
    assert "does not match the sources" in result.stderr
    info = _build_info_of(tmp_path)
    assert info["cuda_kernels"] is False and info["cuda_kernel_kinds"] == []


def _probe(tmp_path: Path, tree=None):
    """Runs load_probe.py with the fake driver as libcuda.so.1, importing
    torchcache_c from `tree` if given, else from where this process does."""
    lib_dir = tmp_path / "lib"
    records = tmp_path / "records"
    lib_dir.mkdir()
    records.mkdir()
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(lib_dir / "libcuda.so.1"),
                    str(HERE / "fake_cuda" / "fake_libcuda.c")], check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib_dir), FAKE_CUDA_RECORD_DIR=str(records))
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    result = subprocess.run([sys.executable, str(HERE / "fake_cuda" / "load_probe.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    return out, records


def _assert_jit_failure_is_reported_and_hashed_on_host(out, records):
    log = "fake ptxas: line 9; error: JIT refused by the test driver"
    for err in out["errors"]:
        assert err is not None and "CUDA_ERROR_INVALID_PTX in cuModuleLoadDataEx" in err
        assert f"JIT log: {log}" in err
    # One load per context: the failure is remembered, not re-JITed on every batch.
    assert (records / "loads").read_text().count("load") == 1
    warnings = [m for level, m in out["warnings"] if level == "WARNING"]
    assert len(warnings) == 1 and "on the host" in warnings[0] and log in warnings[0]
    assert out["host_digests_match"]


@needs_source
def test_a_build_without_nvcc_embeds_the_committed_ptx_and_loads_it_through_the_driver(
        ptx_only_build, tmp_path):
    out, records = _probe(tmp_path, ptx_only_build)
    assert Path(out["extension"]).is_relative_to(ptx_only_build)
    assert out["build_info"]["cuda_kernel_kinds"] == ["ptx"]
    assert out["build_info"]["cuda_kernels"] is True
    # The driver is handed the committed PTX itself (the text, NUL-terminated).
    assert (records / "image").read_bytes() == (ROOT / "csrc" / "hash_cuda.ptx").read_bytes()
    assert "(PTX only)" in out["errors"][0]
    _assert_jit_failure_is_reported_and_hashed_on_host(out, records)


@needs_cc
def test_this_build_hands_its_image_to_cuModuleLoadDataEx_and_reports_a_jit_failure(tmp_path):
    kinds = torchcache_c.build_info()["cuda_kernel_kinds"]
    if not kinds:
        pytest.skip("this build embeds no kernels")
    out, records = _probe(tmp_path)
    assert out["build_info"]["cuda_kernel_kinds"] == kinds
    image = (records / "image").read_bytes()
    if "sass" in kinds:
        assert image[:4] == (0xBA55ED50).to_bytes(4, "little")  # a fatbin
    else:
        assert image.startswith(b"// torchcache_c: generated by tools/gen_ptx.py")
    _assert_jit_failure_is_reported_and_hashed_on_host(out, records)
