#!/usr/bin/env bash
# CI: builds the libFuzzer harnesses (fuzz/build.sh) and runs each for a
# bounded time from the committed seed corpus; any crash, sanitizer report or
# oracle abort fails the job and leaves the input in $FUZZ_WORK/artifacts.
#   FUZZ_SECONDS   seconds per fuzzer (default 45)
#   FUZZ_WORK      scratch directory (default a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-45}"
if ! command -v clang >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
        >/dev/null 2>&1; then
    echo "fuzz: installing clang"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
fi
WORK="${FUZZ_WORK:-$(mktemp -d -t torchcache_c-fuzz-XXXXXX)}"
mkdir -p "$WORK/artifacts"
fuzz/build.sh "$WORK/bin"
status=0
for pair in fuzz_segment:segment fuzz_hash:hash; do
    harness="${pair%%:*}"
    corpus="$WORK/corpus-${pair##*:}"
    # A working copy: the committed seeds stay small and unchanged.
    rm -rf "$corpus"
    cp -r "fuzz/corpus/${pair##*:}" "$corpus"
    echo "fuzz: $harness for ${SECONDS_EACH}s"
    if ! "$WORK/bin/$harness" "$corpus" -max_total_time="$SECONDS_EACH" -timeout=20 \
            -rss_limit_mb=2048 -artifact_prefix="$WORK/artifacts/$harness-" \
            -print_final_stats=1 >"$WORK/$harness.log" 2>&1; then
        echo "fuzz: $harness FAILED; input(s) in $WORK/artifacts:"
        ls -l "$WORK/artifacts"
        tail -60 "$WORK/$harness.log"
        status=1
        continue
    fi
    grep -E "stat::(number_of_executed_units|average_exec_per_sec|new_units_added)" \
        "$WORK/$harness.log" | sed "s/^/fuzz: $harness /"
done
# Every past crash must stay fixed.
"$WORK/bin/fuzz_segment" fuzz/regressions/segment-* >"$WORK/regressions.log" 2>&1 || {
    echo "fuzz: a regression input crashes again"; tail -40 "$WORK/regressions.log"; status=1; }
[ $status -eq 0 ] && echo "fuzz: OK (regression inputs: $(ls fuzz/regressions | wc -l) replayed)"
exit $status
