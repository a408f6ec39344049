#!/usr/bin/env bash
# CI: branch coverage of csrc/store.c, measured with gcov and gated: COVERAGE_MIN
# (percent of branches taken at least once) fails the run when not reached.  Two
# runs count, both of one compile of store.c (-O0 --coverage): the C harnesses
# (fault injection, threads and forks, the less travelled paths of
# tests/c/store_paths.c) and the store's Python tests against an extension
# built with that object (behaviour through the binding: fork, permissions,
# power-loss images, compaction, the shim's fault handling).  A branch counts
# when either run took it.  store.c is compiled with -DNDEBUG, as setup.py
# builds it with Python's flags, so assert()s (not in the shipped code) do not
# count.  Issue 12 asks for 95%, and the gate is 95: 95.23% of 1,466 branches
# on 2026-11-28 03:00 UTC after the held directory descriptor and the unverified
# lookup, with their store_paths cases (94.75% by the C harnesses alone); 95.37%
# of 1,446 on 2026-11-27.  The margin is three branches: the variable ones (a
# fault-injection order, the threaded stress) move by about one.  (A Python
# test's subprocess imports the in-place build from the repository, not the
# coverage build: only the test process itself counts.)  What is left untaken is races (a store closed between a
# call's two locks, a segment changed between a compaction's walk and its
# removal, a file gone between an open and a scan), memory failures the fault
# world does not reach (an mmap'd table of 2 MiB or more failing), what this
# machine cannot show (kill() answering EPERM as root, DT_UNKNOWN listings, a
# 256 MiB put, libzstd missing at open) and defensive checks listed in
# docs/testing.md.  `COVERAGE_OUT=dir` keeps the annotated source.
# Cost: about 1.5 minutes in all on a quiet 2-core VM (3-3.5 minutes at load
# average 7-10; STRESS_ITERATIONS shortens the threaded stress).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN="${COVERAGE_MIN:-95}"
if [ -z "${COVERAGE_MIN:-}" ] && [ "$(id -u)" != 0 ]; then
    # The host-name (own UTS namespace) and other-owner (chown) cases need root and
    # are skipped without it: about five branches, so the gate drops by one point.
    MIN=94
    echo "coverage: not root, the root-only harness cases are skipped: gate $MIN%"
fi
W="$(mktemp -d)"
CFLAGS=(-g -O0 -std=c11 -D_GNU_SOURCE -DNDEBUG -Icsrc -Wall -Wextra --coverage)
objs=()
for src in csrc/store.c csrc/store_index.c csrc/hash.c csrc/hash_portable.c csrc/hash_dispatch.c \
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
"$W/store_stress" "${STRESS_ITERATIONS:-60}" > "$W/stress.log"
"$W/store_paths" > "$W/paths.log"
ln -s "$PWD/csrc" "$W/csrc"  # gcov finds the source where the objects were compiled from
(cd "$W" && gcov -b -c store.o > gcov.txt 2>&1)
line="$(grep -A4 "File 'csrc/store.c'" "$W/gcov.txt" | grep 'Taken at least once' || true)"
echo "coverage: csrc/store.c by the C harnesses ${line:-no gcov data}"

# The store's Python tests (behaviour through the binding: fork, the shim's
# fault handling, permissions, power-loss images, compaction) against an
# extension whose store.c is built exactly as above; the rest of the extension
# is built optimised (as setup.py does, without the embedded CUDA image) so
# hashing stays fast.  The package is a copy, found first on PYTHONPATH.
PYW="$W/py"
mkdir -p "$PYW/obj" "$PYW/pkg/torchcache_c" "$PYW/src"
cp torchcache_c/*.py torchcache_c/*.pyi torchcache_c/py.typed "$PYW/pkg/torchcache_c/"
PYINC="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
EXT="$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
ln -s "$PWD/csrc" "$PYW/csrc"
SIMD="$(python3 .ci/simd_sources.py)"
pyobjs=()
for src in csrc/*.c; do
    o="$PYW/obj/$(basename "${src%.c}").o"
    case "$src" in
        csrc/store.c) (cd "$PYW" && gcc "${CFLAGS[@]}" -fPIC -c "$src" -o "$o") ;;
        *) grep -q "^$src " <<< "$SIMD" && continue  # built below with their flags
           gcc -O2 -std=c11 -fPIC -fvisibility=hidden -D_GNU_SOURCE -DTC_VERSION='"cov"' \
               -Icsrc -I"$PYINC" -c "$src" -o "$o" ;;
    esac
    pyobjs+=("$o")
done
if [ "$(uname -m)" = x86_64 ]; then
    while read -r src flags; do
        o="$PYW/obj/$(basename "${src%.c}").o"
        # shellcheck disable=SC2086
        gcc -O2 -std=c11 -fPIC -D_GNU_SOURCE -Icsrc $flags -c "$src" -o "$o"
        pyobjs+=("$o")
    done <<< "$SIMD"
fi
gcc -shared --coverage "${pyobjs[@]}" -ldl -lpthread -o "$PYW/pkg/torchcache_c/_C$EXT"
PYTHONPATH="$PYW/pkg" python -P -m pytest -q -p no:cacheprovider \
    tests/test_store.py tests/test_store_faults.py tests/test_store_format.py \
    tests/test_store_errors.py tests/test_store_permissions.py tests/test_store_power_loss.py \
    tests/test_compact.py tests/test_cache_faults.py tests/test_store_index.py > "$W/pytest.log" 2>&1 \
    || { tail -30 "$W/pytest.log"; echo "coverage: the store tests failed on the coverage build"; exit 1; }
(cd "$PYW" && gcov -b -c -o obj obj/store.o > gcov.txt 2>&1)

# A branch counts when either run took it (both objects come from the same
# compile of store.c, so their branches match line by line).
line="$(python3 - "$W/store.c.gcov" "$PYW/store.c.gcov" <<'PY'
import re, sys
def branches(path):
    out, line = {}, 0
    for text in open(path):
        m = re.match(r"\s*[^:]+:\s*(\d+):", text)
        if m:
            line = int(m.group(1))
            continue
        m = re.match(r"branch\s+\d+ (taken (\d+)|never executed)", text)
        if m:
            out.setdefault(line, []).append(m.group(2) not in (None, "0"))
    return out
a, b = branches(sys.argv[1]), branches(sys.argv[2])
total = taken = 0
for ln, br in a.items():
    other = b.get(ln, [])
    if len(other) == len(br):
        br = [x or y for x, y in zip(br, other)]
    total += len(br)
    taken += sum(br)
print(f"Taken at least once:{100.0 * taken / total:.2f}% of {total}")
PY
)"
echo "coverage: csrc/store.c by the C harnesses and the store's Python tests ${line}"
pct="$(echo "$line" | sed -n 's/.*once:\([0-9.]*\)%.*/\1/p')"
cp "$W/store.c.gcov" "${COVERAGE_OUT:-/tmp}/store.c.gcov" 2>/dev/null || true
cp "$PYW/store.c.gcov" "${COVERAGE_OUT:-/tmp}/store.c.py.gcov" 2>/dev/null || true
if [ -z "$pct" ] || awk -v p="$pct" -v m="$MIN" 'BEGIN { exit !(p < m) }'; then
    echo "coverage: below the gate of ${MIN}% (annotated source: ${COVERAGE_OUT:-/tmp}/store.c.gcov)"
    exit 1
fi
echo "coverage: OK (gate ${MIN}%)"
