"""The hash's SIMD layout stays as docs/hash.md (section 11) describes it: one owner of
dispatch (csrc/hash_dispatch.c), the portable reference in its own file, and one list
of which C file needs which instruction-set flags (setup.py's SIMD_SOURCES, which every
build script reads through .ci/simd_sources.py)."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def _simd_sources() -> dict:
    spec = importlib.util.spec_from_file_location("simd_sources",
                                                  ROOT / ".ci" / "simd_sources.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.simd_sources()


def _c_files():
    return sorted(CSRC.glob("*.c"))


def test_every_file_with_intrinsics_is_in_the_one_flags_list():
    listed = _simd_sources()
    for name in listed:
        assert (CSRC / name).is_file(), f"SIMD_SOURCES names {name}, which does not exist"
    uses = {p.name for p in _c_files()
            if re.search(r"#include <immintrin\.h>|\b_mm(256|512)?_\w+\(", p.read_text())}
    assert uses == set(listed), (
        f"C files with x86 intrinsics {sorted(uses)} != setup.py SIMD_SOURCES {sorted(listed)}:"
        " add the file and its flags to SIMD_SOURCES (the only place flags live)")


def test_no_build_script_spells_out_simd_flags():
    scripts = [ROOT / "setup.py", ROOT / "fuzz" / "build.sh", *sorted((ROOT / ".ci").glob("*"))]
    for script in scripts:
        if not script.is_file():
            continue
        text = script.read_text()
        if script.name == "setup.py":
            # Only inside the SIMD_SOURCES dict itself.
            start = text.index("SIMD_SOURCES = {")
            text = text[:start] + text[text.index("}", start) + 1:]
        assert not re.search(r"-m(avx|sse|fma|bmi)", text), (
            f"{script.relative_to(ROOT)} names an instruction-set flag; take it from "
            "setup.py's SIMD_SOURCES (.ci/simd_sources.py)")


def test_dispatch_has_one_owner():
    owner = "hash_dispatch.c"
    for p in _c_files():
        text = p.read_text()
        if p.name == owner:
            assert "_Atomic(const tc_hash_kernels *)" in text
            assert "__builtin_cpu_supports" in text
            continue
        assert "__builtin_cpu_supports" not in text, f"{p.name} detects CPU features"
        assert not re.search(r"_Atomic\s*\(\s*const tc_hash_kernels", text), (
            f"{p.name} holds a kernels pointer of its own")
        # A level's kernel table is named only where it is defined and by the owner.
        for table in re.findall(r"\btc_kernels_(portable|avx2|avx512)\b", text):
            defines = re.search(rf"const tc_hash_kernels tc_kernels_{table} = ", text)
            assert defines, f"{p.name} names tc_kernels_{table}; only {owner} selects kernels"


def test_portable_reference_has_no_intrinsics():
    text = (CSRC / "hash_portable.c").read_text()
    assert "immintrin" not in text and not re.search(r"\b_mm(256|512)?_", text)
