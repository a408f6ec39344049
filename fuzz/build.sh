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
ENGINE=(csrc/hash.c csrc/hash_dispatch.c csrc/hash_batch.c csrc/store.c csrc/zstd_dl.c)
objs=()
for src in "${ENGINE[@]}"; do
    obj="$OUT/$(basename "${src%.c}").o"
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj"
    objs+=("$obj")
done
if [ "$(uname -m)" = x86_64 ]; then
    # As in setup.py: each SIMD variant with its own instruction-set flags.
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link,address,undefined -mavx2 \
        -c csrc/hash_avx2.c -o "$OUT/hash_avx2.o"
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link,address,undefined -mavx512f -mavx512dq \
        -c csrc/hash_avx512.c -o "$OUT/hash_avx512.o"
    objs+=("$OUT/hash_avx2.o" "$OUT/hash_avx512.o")
fi
for harness in fuzz_segment fuzz_hash; do
    "$CC" "${CFLAGS[@]}" -fsanitize=fuzzer,address,undefined "fuzz/$harness.c" "${objs[@]}" \
        -ldl -lpthread -o "$OUT/$harness"
done
echo "built $OUT/fuzz_segment $OUT/fuzz_hash"
