#!/usr/bin/env bash
# Builds a C program against the store engine (no Python), the way
# fuzz/build.sh does: build_store_c.sh OUT PROGRAM.c [compiler flags...]
# (CC defaults to gcc).  Used by .ci/tsan.sh, .ci/faultinject.sh, .ci/coverage.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$1"
PROGRAM="$2"
shift 2
CC="${CC:-gcc}"
# The sanitizer runtimes (gcc 12 on Debian 12); a fresh CI machine may lack them.
if ! "$CC" -fsanitize=thread -x c - -o /dev/null <<<'int main(void){return 0;}' 2>/dev/null ||
   ! "$CC" -fsanitize=address,undefined -x c - -o /dev/null <<<'int main(void){return 0;}' \
       2>/dev/null; then
    echo "build_store_c: installing gcc and the sanitizer runtimes"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq gcc libasan8 libubsan1 libtsan2 >/dev/null
fi
CFLAGS=(-g -std=c11 -D_GNU_SOURCE -Icsrc -Wall -Wextra "$@")
SRC=(csrc/store.c csrc/store_index.c csrc/hash.c csrc/hash_portable.c csrc/hash_dispatch.c csrc/hash_batch.c
     csrc/zstd_dl.c)
objs=()
work="$(mktemp -d)"
for src in "${SRC[@]}"; do
    obj="$work/$(basename "${src%.c}").o"
    "$CC" "${CFLAGS[@]}" -c "$src" -o "$obj"
    objs+=("$obj")
done
if [ "$(uname -m)" = x86_64 ]; then
    # The SIMD files and their flags: setup.py's one list (.ci/simd_sources.py).
    while read -r src flags; do
        obj="$work/$(basename "${src%.c}").o"
        # shellcheck disable=SC2086
        "$CC" "${CFLAGS[@]}" $flags -c "$src" -o "$obj"
        objs+=("$obj")
    done < <(python3 .ci/simd_sources.py)
fi
"$CC" "${CFLAGS[@]}" "$PROGRAM" "${objs[@]}" -ldl -lpthread -o "$OUT"
rm -rf "$work"
