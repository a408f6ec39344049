#!/usr/bin/env bash
# CI: fault injection into the store engine (tests/c/store_faults.c): every
# store operation with its Nth allocation, open, read, write, listing, random,
# mmap, fsync or rename failing, once and for ever, with each error it can
# give, under ASan and UBSan; then tests/c/store_paths.c under the same.
set -euo pipefail
cd "$(dirname "$0")/.."
WRAP=()
for f in malloc calloc realloc strdup open fstat fstatat pread preadv pwritev pwrite \
         opendir readdir getrandom mmap fsync rename ftruncate lseek; do
    WRAP+=("-Wl,--wrap=$f")
done
BIN="$(mktemp -d)/store_faults"
bash .ci/build_store_c.sh "$BIN" tests/c/store_faults.c -O1 \
    -fsanitize=address,undefined -fno-sanitize-recover=undefined "${WRAP[@]}"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$BIN"
# The store's less travelled paths (tests/c/store_paths.c: damaged, hand-made
# and replaced segments, compaction, the arena, hostile entries) under the
# same sanitizers: a few seconds.
PATHS="$(dirname "$BIN")/store_paths"
bash .ci/build_store_c.sh "$PATHS" tests/c/store_paths.c -O1 \
    -fsanitize=address,undefined -fno-sanitize-recover=undefined
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 "$PATHS"
