#!/usr/bin/env bash
# Builds the libFuzzer harnesses against the C engine (no Python): clang with
# ASan + UBSan (UB aborts, so the fuzzer reports it as a crash).
#   fuzz/build.sh [OUT_DIR]   (default fuzz/build)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-fuzz/build}"
CC="${CC:-clang}"
mkdir -p "$OUT"
CFLAGS=(-g -O1 -std=c11 -D_GNU_SOURCE -Icsrc -Wall -Wextra
        -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
# Every engine file (no Python.h) except the SIMD ones, which setup.py's
# SIMD_SOURCES lists with their instruction-set flags.
SIMD="$(python3 .ci/simd_sources.py)"
ENGINE=(csrc/hash.c csrc/hash_portable.c csrc/hash_dispatch.c csrc/hash_batch.c csrc/store.c csrc/store_index.c
        csrc/zstd_dl.c)
objs=()
for src in "${ENGINE[@]}"; do
    obj="$OUT/$(basename "${src%.c}").o"
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj"
    objs+=("$obj")
done
if [ "$(uname -m)" = x86_64 ]; then
    while read -r src flags; do
        obj="$OUT/$(basename "${src%.c}").o"
        # shellcheck disable=SC2086  # flags are words
        "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link,address,undefined $flags -c "$src" -o "$obj"
        objs+=("$obj")
    done <<<"$SIMD"
fi
for harness in fuzz_segment fuzz_hash; do
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer,address,undefined "fuzz/$harness.c" "${objs[@]}" \
        -ldl -lpthread -o "$OUT/$harness"
done
echo "built $OUT/fuzz_segment $OUT/fuzz_hash"
