"""Generate, stamp and check csrc/hash_cuda.ptx, the PTX every build embeds.

    python tools/gen_ptx.py                     regenerate csrc/hash_cuda.ptx (needs nvcc)
    python tools/gen_ptx.py --check             the stamp matches the sources (no nvcc needed)
    python tools/gen_ptx.py --check-regenerate  also: regenerating gives an equivalent module

The PTX targets compute_75, the oldest architecture CUDA 13's nvcc accepts, so the
driver can JIT it for every GPU from Turing on.  nvcc declares the PTX ISA of the
toolkit that ran it (9.0 for CUDA 13.0), which only drivers of that toolkit or newer
can JIT; the kernels use nothing newer than PTX ISA 7.0 (CUDA 11.0, driver r450), so
the file declares 7.0, and generation fails unless nvcc itself accepts the file at
that version for sm_75.  The stamp is a SHA-256 of the kernel source and every header
it includes ("..." includes, followed recursively), with comments and whitespace
removed, so that editing a comment does not make the PTX stale.  docs/cuda.md,
"PTX in every build", has the reasons.  setup.py imports this file: keep it free of
dependencies beyond the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

CSRC = Path(__file__).resolve().parent.parent / "csrc"
KERNEL_SOURCE = "hash_cuda.cu"
PTX_NAME = "hash_cuda.ptx"
ARCH = "75"
PTX_ISA = "7.0"

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_DIGEST_LINE = re.compile(r"^// sources-digest: sha256:([0-9a-f]{64})$", re.M)
_NVCC_LINE = re.compile(r"^// nvcc: (.*)$", re.M)


def source_files(csrc: Path = CSRC) -> List[str]:
    """The kernel source and the local headers it includes, in inclusion order."""
    seen: List[str] = []
    todo = [KERNEL_SOURCE]
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        for inc in _INCLUDE.findall((csrc / name).read_text()):
            if (csrc / inc).exists():
                todo.append(inc)
    return seen


def _code_only(text: str) -> str:
    """C source without comments, whitespace runs collapsed; string literals kept as is."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "\n":
            out.append("\n")  # preprocessor lines end at a newline
            i += 1
        elif c.isspace():
            out.append(" ")
            i += 1
        else:
            out.append(c)
            i += 1
    lines = (re.sub(r" +", " ", line).strip() for line in "".join(out).split("\n"))
    return "\n".join(line for line in lines if line)


def sources_digest(csrc: Path = CSRC) -> str:
    h = hashlib.sha256()
    for name in source_files(csrc):
        h.update(name.encode() + b"\0" + _code_only((csrc / name).read_text()).encode() + b"\0")
    return h.hexdigest()


def stamped_digest(ptx: str) -> Optional[str]:
    m = _DIGEST_LINE.search(ptx)
    return m.group(1) if m else None


def is_fresh(csrc: Path = CSRC) -> bool:
    """True if csrc/hash_cuda.ptx exists and was generated from the current sources."""
    path = csrc / PTX_NAME
    return path.exists() and stamped_digest(path.read_text()) == sources_digest(csrc)


def _nvcc_release(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^.*release .*$", out, re.M)
    return m.group(0).strip() if m else out.strip().splitlines()[-1]


def generate(nvcc: str, csrc: Path = CSRC) -> str:
    """Compile the kernels to PTX for compute_75 and return the stamped text."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.ptx"
        subprocess.run([nvcc, "--ptx", "-O3", f"-arch=compute_{ARCH}", "-I", str(csrc),
                        "-o", str(raw), str(csrc / KERNEL_SOURCE)], check=True)
        text = raw.read_text()
        emitted = re.search(r"^\.version (\d+\.\d+)$", text, re.M)
        if emitted is None:
            raise RuntimeError("nvcc's PTX has no .version directive")
        if tuple(map(int, emitted.group(1).split("."))) < tuple(map(int, PTX_ISA.split("."))):
            raise RuntimeError(f"nvcc emitted PTX ISA {emitted.group(1)}, older than {PTX_ISA}")
        text = text.replace(f".version {emitted.group(1)}\n", f".version {PTX_ISA}\n", 1)
        lowered = Path(tmp) / "lowered.ptx"
        lowered.write_text(text)
        # ptxas rejects an instruction or directive the declared ISA does not have.
        subprocess.run([nvcc, "-cubin", f"-arch=sm_{ARCH}", "-o", str(Path(tmp) / "check.cubin"),
                        str(lowered)], check=True)
    names = " ".join(source_files(csrc))
    header = (
        "// torchcache_c: generated by tools/gen_ptx.py from the files below; do not edit.\n"
        "// After changing any of them run `python tools/gen_ptx.py`; CI checks the digest.\n"
        f"// sources: {names}\n"
        f"// sources-digest: sha256:{sources_digest(csrc)}\n"
        f"// arch: compute_{ARCH}, PTX ISA {PTX_ISA} (nvcc emitted {emitted.group(1)})\n"
        f"// nvcc: {_nvcc_release(nvcc)}\n"
    )
    return header + text


def _module_lines(ptx: str) -> List[str]:
    """The PTX without comment lines (nvcc's version banner, our stamp) and blank lines."""
    return [line for line in ptx.splitlines()
            if line.strip() and not line.strip().startswith("//")]


def _interface(ptx: str) -> List[str]:
    """What cuda.c depends on: entry names, their parameters and launch bounds."""
    lines = _module_lines(ptx)
    keep = []
    for i, line in enumerate(lines):
        if line.startswith((".version", ".target", ".address_size", ".visible .entry")):
            keep.append(line)
        elif line.strip().startswith((".param", ".maxntid", ".reqntid")) and i > 0:
            keep.append(line.strip())
    return keep


def equivalent(committed: str, regenerated: str) -> Optional[str]:
    """None if the two stamped PTX files are the same module, else why not.

    With the same nvcc release the PTX must be identical once comment lines are
    dropped (the banner names the exact build of nvcc).  Another release may schedule
    registers differently, so then only the kernel interface must match.
    """
    same_nvcc = _NVCC_LINE.search(committed) and _NVCC_LINE.search(regenerated) and \
        _NVCC_LINE.search(committed).group(1) == _NVCC_LINE.search(regenerated).group(1)
    if same_nvcc:
        a, b = _module_lines(committed), _module_lines(regenerated)
        if a != b:
            diff = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                        min(len(a), len(b)))
            return (f"the PTX differs from a fresh nvcc build at instruction line {diff + 1} "
                    f"({a[diff] if diff < len(a) else 'end'!r} vs "
                    f"{b[diff] if diff < len(b) else 'end'!r})")
        return None
    if _interface(committed) != _interface(regenerated):
        return "the kernels' interface (entries, parameters, launch bounds) differs"
    return None


def find_nvcc() -> Optional[str]:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csrc", type=Path, default=CSRC)
    parser.add_argument("--nvcc", default=None, help="nvcc to use (default: the one on PATH)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--check-regenerate", action="store_true")
    args = parser.parse_args(argv)
    path = args.csrc / PTX_NAME
    if args.check or args.check_regenerate:
        if not path.exists():
            print(f"{path} is missing; run python tools/gen_ptx.py", file=sys.stderr)
            return 1
        committed = path.read_text()
        if stamped_digest(committed) != sources_digest(args.csrc):
            print(f"{path} is stale: its stamp does not match {', '.join(source_files(args.csrc))};"
                  " run python tools/gen_ptx.py and commit the result", file=sys.stderr)
            return 1
        print(f"{path.name}: stamp matches the sources")
        if args.check:
            return 0
    nvcc = args.nvcc or find_nvcc()
    if nvcc is None:
        print("nvcc not found (PATH or --nvcc)", file=sys.stderr)
        return 1
    fresh = generate(nvcc, args.csrc)
    if args.check_regenerate:
        why = equivalent(committed, fresh)
        if why:
            print(f"{path.name} is not what nvcc generates today: {why}", file=sys.stderr)
            return 1
        print(f"{path.name}: equivalent to a fresh build by {_nvcc_release(nvcc)}")
        return 0
    path.write_text(fresh)
    print(f"wrote {path} ({len(fresh)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
