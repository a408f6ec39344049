#!/usr/bin/env bash
# CI sanitizer step: build the extension with AddressSanitizer and UBSan
# (setup.py, TORCHCACHE_C_SANITIZE=1) into the active venv, run the tests that
# drive the C core, then rebuild the normal extension so the venv is left with
# a normal build (also when a test fails).
# Expects an activated venv with torch and the test extras installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 TORCHCACHE_C_NO_CUDA=1

rebuild_normal() {
    echo "sanitize.sh: rebuilding the normal extension"
    rm -rf build
    TORCHCACHE_C_SANITIZE=0 pip install -q --no-build-isolation -e .
}
trap rebuild_normal EXIT

# A stale object from the normal build would be linked as is; build from scratch.
rm -rf build
TORCHCACHE_C_SANITIZE=1 pip install -q --no-build-isolation -e .
rm -rf build

# The interpreter is not built with ASan, so the runtimes are preloaded.  Leaks
# are not checked (CPython and torch keep memory until exit on purpose); every
# ASan or UBSan report aborts the run.
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    python -m pytest -q -p no:cacheprovider \
        tests/test_hash_*.py tests/test_store*.py tests/test_multiprocess.py \
        tests/test_call_path.py tests/test_remote_record.py "$@"
