#!/usr/bin/env bash
# CI: branch coverage of csrc/store.c by the C harnesses (fault injection,
# threads and forks, the less travelled paths), measured with gcov and gated: COVERAGE_MIN (percent of
# branches taken at least once) fails the run when not reached.  The gate
# stands just under what the harnesses reach today (68.2% of 1,232 branches on
# 2026-11-27), so coverage cannot fall; issue 12 asks for 95%, which needs more
# harness cases (allocation failures inside compaction and resync, NFS-like
# late bytes, fd-cache eviction under pins) than are written yet.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN="${COVERAGE_MIN:-67}"
W="$(mktemp -d)"
CFLAGS=(-g -O0 -std=c11 -D_GNU_SOURCE -Icsrc -Wall -Wextra --coverage)
objs=()
for src in csrc/store.c csrc/hash.c csrc/hash_portable.c csrc/hash_dispatch.c \
           csrc/hash_batch.c csrc/zstd_dl.c; do
    gcc "${CFLAGS[@]}" -c "$src" -o "$W/$(basename "${src%.c}").o"
    objs+=("$W/$(basename "${src%.c}").o")
done
if [ "$(uname -m)" = x86_64 ]; then
    # The SIMD files and their flags: setup.py's one list (.ci/simd_sources.py).
    while read -r src flags; do
        # shellcheck disable=SC2086
        gcc "${CFLAGS[@]}" $flags -c "$src" -o "$W/$(basename "${src%.c}").o"
        objs+=("$W/$(basename "${src%.c}").o")
    done < <(python3 .ci/simd_sources.py)
fi
WRAP=()
for f in malloc calloc realloc strdup open fstat fstatat pread preadv pwritev pwrite \
         opendir readdir getrandom mmap fsync rename ftruncate lseek; do
    WRAP+=("-Wl,--wrap=$f")
done
gcc "${CFLAGS[@]}" tests/c/store_faults.c "${objs[@]}" "${WRAP[@]}" -ldl -lpthread \
    -o "$W/store_faults"
gcc "${CFLAGS[@]}" tests/c/store_stress.c "${objs[@]}" -ldl -lpthread -o "$W/store_stress"
gcc "${CFLAGS[@]}" tests/c/store_paths.c "${objs[@]}" -ldl -lpthread -o "$W/store_paths"
"$W/store_faults" > "$W/faults.log"
"$W/store_stress" 60 > "$W/stress.log"
"$W/store_paths" > "$W/paths.log"
(cd "$W" && gcov -b -c store.o > gcov.txt 2>&1)
line="$(grep -A4 "File 'csrc/store.c'" "$W/gcov.txt" | grep 'Taken at least once' || true)"
echo "coverage: csrc/store.c ${line:-no gcov data}"
pct="$(echo "$line" | sed -n 's/.*once:\([0-9.]*\)%.*/\1/p')"
cp "$W/store.c.gcov" "${COVERAGE_OUT:-/tmp}/store.c.gcov" 2>/dev/null || true
if [ -z "$pct" ] || awk -v p="$pct" -v m="$MIN" 'BEGIN { exit !(p < m) }'; then
    echo "coverage: below the gate of ${MIN}% (annotated source: ${COVERAGE_OUT:-/tmp}/store.c.gcov)"
    exit 1
fi
echo "coverage: OK (gate ${MIN}%)"
