#!/usr/bin/env bash
# Compile every portable C file for aarch64 with -Werror: the x86 SIMD files are the
# only ones allowed to be architecture-specific (docs/architecture.md, "SIMD dispatch").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q gcc-aarch64-linux-gnu >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q gcc-aarch64-linux-gnu >/dev/null; }
fi
PYINC="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
out="$(mktemp -d)"
# The x86 files are the ones setup.py's SIMD_SOURCES lists.
SIMD="$(python3 .ci/simd_sources.py | cut -d' ' -f1)"
for f in csrc/*.c; do
    if grep -qxF "$f" <<<"$SIMD"; then continue; fi
    aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Wno-unused-parameter -Werror \
        -D_GNU_SOURCE -Icsrc -I"$PYINC" -c "$f" -o "$out/$(basename "$f").o"
done
echo "aarch64: $(ls "$out" | wc -l) C files compile cleanly"
rm -rf "$out"
