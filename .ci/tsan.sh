#!/usr/bin/env bash
# CI: ThreadSanitizer over tests/c/store_stress.c (threads putting, looking up,
# gathering, refreshing and verifying on one store while another thread forks
# children that use it).  Any race report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(mktemp -d)/store_stress_tsan"
bash .ci/build_store_c.sh "$BIN" tests/c/store_stress.c -O1 -fsanitize=thread
TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1" "$BIN" "${STRESS_ITERATIONS:-200}"
