#!/usr/bin/env python3
"""Mutation testing of the C core: a curated list of deliberate bugs, each applied alone.

    python tools/mutate.py                 # every mutant (about 10 minutes on 2 loaded cores)
    python tools/mutate.py --only store    # ids starting with "store"
    python tools/mutate.py --list          # the list, with each snippet's state (ok/stale)
    python tools/mutate.py --json benchmarks/results/mutation-c.json

Each mutant names a file under csrc/, an exact source snippet and its replacement, and the
tests that must catch it. A snippet that is not found exactly once is reported "stale"
(the code moved on: update or retire the mutant), never silently skipped.

The working tree is never edited: the tracked and untracked (not ignored) files are copied
to a scratch directory, the extension is built there once (TORCHCACHE_C_NO_CUDA=1: the
committed PTX, no nvcc), and the gcc commands of that build are replayed for one mutant at a
time: only the mutated file is recompiled and the extension relinked, then the original
object and extension are put back. Tests run from the scratch tree (its torchcache_c comes
first on sys.path, for subprocesses too) with -x, under a per-mutant timeout.

Outcomes: killed (a test failed, crashed or hit the timeout), survived (all selected tests
passed), stale (snippet not found once), invalid (the mutant does not compile), skipped
(needs what this machine lacks: nvcc, a GPU). The baseline run of every selection on the
unmutated build must pass first. Exit status 1 if any mutant survived or is stale.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]

# ---- test selections (pytest arguments, run from the scratch tree's root) --------------

# Each selection is a list of pytest calls (a -k applies to the files of its own call).
LIMIT = [["tests/test_cache_flow.py", "-k", "limit"],
         ["tests/test_keywords.py", "-k", "size_limit"]]
STORE_LIMIT = [["tests/test_store.py", "-k", "max_bytes"],
               ["tests/test_cache_flow.py", "-k", "limit"]]
STORE_BASIC = [["tests/test_store.py", "-k", "round_trip or duplicate or first_value or lookup "
                "or persist or gather_leaves"]]
GUARDS = [["tests/test_mutation_guards.py"]]
STORE_CORRUPT = [["tests/test_store.py", "-k", "bit_flips or truncated or garbage"],
                 ["tests/test_store_format.py"]] + GUARDS
STORE_FORMAT = [["tests/test_store_format.py"],
                ["tests/test_store.py", "-k", "bit_flips or persist"]]
STORE_KEYS = [["tests/test_store.py", "-k", "duplicate or first_value or gather_leaves"],
              ["tests/test_killed_writers.py", "tests/test_keywords.py"]] + GUARDS
HASH_VEC = [["tests/test_hash_vectors.py"]]
HASH_ALL = [["tests/test_hash_vectors.py", "tests/test_hash_api.py",
             "tests/test_hash_dispatch.py"]]
HASH_STRIDED = [["tests/test_hash_api.py", "-k", "non_contiguous or strided or conjugate"],
                ["tests/test_hash_dispatch.py"]]
DISPATCH = [["tests/test_hash_dispatch.py"]]
DLPACK = [["tests/test_hash_api.py", "tests/test_dlpack_capsule.py"],
          ["tests/test_store.py", "-k", "dtype_word or dimensions or round_trip"]] + GUARDS
CUDA_HOST = [["tests/test_cuda_kernel_image.py", "-k", "this_build"],
             ["tests/test_cuda_unavailable.py"]]
CUDA_GPU = [["tests/test_cuda.py"]]

@dataclass
class Mutant:
    id: str
    file: str          # under csrc/
    find: str          # exact snippet; must occur exactly once
    replace: str
    tests: List[List[str]]  # pytest calls, each a list of arguments
    why: str           # the bug it stands for
    requires: str = ""  # "gpu" or "cc" (a C compiler for the fake CUDA driver)


M = Mutant


def _cuda(id: str, find: str, replace: str, why: str, gpu: bool = False) -> Mutant:
    """A mutant of cuda.c: its host side runs against the fake CUDA driver (needs a C
    compiler), its device side needs a GPU."""
    return Mutant(id, "cuda.c", find, replace, CUDA_GPU if gpu else CUDA_HOST, why,
                  requires="gpu" if gpu else "cc")


MUTANTS: List[Mutant] = [
    # ---- store.c: limits -------------------------------------------------------------
    M("store-limit-ge", "store.c",
      "s->bytes_written + staged_bytes + total > s->opt.max_bytes",
      "s->bytes_written + staged_bytes + total >= s->opt.max_bytes", LIMIT,
      "byte limit boundary: a limit of exactly N records admits only N - 1"),
    M("store-limit-dropped", "store.c",
      "if (s->opt.max_bytes &&\n            s->bytes_written",
      "if (0 && s->opt.max_bytes &&\n            s->bytes_written", LIMIT,
      "the byte limit is never enforced"),
    M("store-limit-no-staged", "store.c",
      "s->bytes_written + staged_bytes + total > s->opt.max_bytes",
      "s->bytes_written + total > s->opt.max_bytes", STORE_LIMIT,
      "bytes staged earlier in the same put do not count against the limit"),
    M("store-limit-off-by-one", "store.c",
      "s->bytes_written + staged_bytes + total > s->opt.max_bytes",
      "s->bytes_written + staged_bytes + total > s->opt.max_bytes + 1", LIMIT,
      "limit boundary one byte late"),
    M("store-round-up", "store.c",
      "return (n + a - 1) / a * a;", "return (n + a) / a * a;",
      STORE_BASIC + STORE_LIMIT + GUARDS,
      "payload padding one alignment unit too long when already aligned"),
    # ---- store.c: checksums ----------------------------------------------------------
    M("store-hsum-key0-dropped", "store.c",
      "a = tc_fmix64(a ^ (i == 7 ? 0 : get_le64(b + 8 * i))) + GAMMA;",
      "a = tc_fmix64(a ^ (i == 7 || i == 1 ? 0 : get_le64(b + 8 * i))) + GAMMA;",
      STORE_CORRUPT, "the header checksum skips the first key word"),
    M("store-hsum-shape-dropped", "store.c",
      "a = tc_fmix64(a ^ (i == 7 ? 0 : get_le64(b + 8 * i))) + GAMMA;",
      "a = tc_fmix64(a ^ (i >= 7 ? 0 : get_le64(b + 8 * i))) + GAMMA;",
      STORE_CORRUPT, "the header checksum stops before the shape words"),
    M("store-hsum-offset-dropped", "store.c",
      ": tc_fmix64(HEADER_SEED_V2 ^ segment_id) ^ offset;",
      ": tc_fmix64(HEADER_SEED_V2 ^ segment_id);", STORE_FORMAT,
      "a v2 header is not bound to its offset (a record inside a payload verifies)"),
    M("store-hsum-segment-dropped", "store.c",
      ": tc_fmix64(HEADER_SEED_V2 ^ segment_id) ^ offset;",
      ": tc_fmix64(HEADER_SEED_V2) ^ offset;", STORE_FORMAT,
      "a v2 header is not bound to its segment (a copied segment verifies)"),
    M("store-hsum-check-dropped", "store.c",
      "if (header_checksum(h, segment_id, offset) != h->header_sum) {",
      "if (0 && header_checksum(h, segment_id, offset) != h->header_sum) {", STORE_CORRUPT,
      "header checksums are never compared"),
    M("store-psum-h1-dropped", "store.c",
      "s = tc_fmix64(s ^ h[0]) + h[1];", "s = tc_fmix64(s ^ h[0]);", STORE_CORRUPT,
      "the payload checksum drops the second half of each block digest"),
    M("store-psum-h0-dropped", "store.c",
      "s = tc_fmix64(s ^ h[0]) + h[1];", "s = tc_fmix64(s) + h[1];", STORE_CORRUPT,
      "the payload checksum drops the first half of each block digest"),
    M("store-psum-compare-dropped", "store.c",
      "    return sum == h->payload_sum;\n}", "    return 1;\n}", STORE_CORRUPT,
      "payload checksums of file records are never compared"),
    M("store-probe-bad-served", "store.c",
      "    if (!ok) {\n        entry_kill(s, e, 1);\n        return NULL;\n    }",
      "    if (0) {\n        entry_kill(s, e, 1);\n        return NULL;\n    }", STORE_CORRUPT,
      "a record whose payload fails its checksum is served"),
    # ---- store.c: validation and the index ---------------------------------------------
    M("store-short-at-end", "store.c",
      "    if (t > avail)\n        return HDR_SHORT;",
      "    if (t >= avail)\n        return HDR_SHORT;",
      STORE_BASIC, "the last record of a file is taken for a torn one"),
    M("store-raw-len-unchecked", "store.c",
      "    if (n != h->raw_len) {", "    if (0) {",
      STORE_CORRUPT + [["tests/test_fuzz_regressions.py"]],
      "a header whose raw_len disagrees with its shape is accepted"),
    M("store-itemsize-subbyte", "store.c",
      "if ((dtype_word >> 32) != 0 || bits * lanes == 0 || bits * lanes % 8 != 0)",
      "if ((dtype_word >> 32) != 0 || bits * lanes == 0)",
      [["tests/test_store.py", "-k", "bad_arguments or dtype_word"]] + GUARDS,
      "a dtype that is not a whole number of bytes is accepted"),
    M("store-find-key0-only", "store.c",
      "        if (e->key0 == k0 && e->key1 == k1)\n            return e;",
      "        if (e->key0 == k0)\n            return e;", STORE_KEYS,
      "the index compares only the first key word: another item's output is served"),
    M("store-dedup-key0-only", "store.c",
      "dup = b.recs[j].key0 == k0 && b.recs[j].key1 == k1;", "dup = b.recs[j].key0 == k0;",
      STORE_KEYS, "two keys sharing their first word in one put: the second is dropped"),
    M("store-present-rewritten", "store.c",
      "        if (entry_live(index_find(s, k0, k1)))\n            continue;",
      "        if (0)\n            continue;", STORE_KEYS + STORE_LIMIT,
      "keys already stored are written again"),
    M("store-index-grow-late", "store.c",
      "if ((s->nused + 1) * 10 > s->nslots * 7) {", "if (s->nused + 1 > s->nslots) {",
      [["tests/test_store.py", "-k", "four_processes or threads"]] + GUARDS,
      "the open-addressing index fills completely (a missing key's probe never ends)"),
    # ---- hash_portable.c -----------------------------------------------------------------
    M("hash-key-index", "hash_portable.c",
      "uint64_t z = TC_KEY_SEED + (index + 1) * TC_GAMMA;",
      "uint64_t z = TC_KEY_SEED + index * TC_GAMMA;", HASH_VEC, "key(i) off by one"),
    M("hash-mul-shift", "hash_portable.c",
      "return (k & 0xffffffffULL) * (k >> 32);", "return (k & 0xffffffffULL) * (k >> 31);",
      HASH_VEC, "the 32x32 multiply takes the wrong high half"),
    M("hash-stripe-w-dropped", "hash_portable.c",
      "a[j] += w + mul_lo_hi(w ^ tc_keys[TC_K_LANE1 + j] ^ ks1);",
      "a[j] += mul_lo_hi(w ^ tc_keys[TC_K_LANE1 + j] ^ ks1);", HASH_VEC,
      "the portable stripe loop drops the data word term"),
    M("hash-finish-lane-dropped", "hash_portable.c",
      "for (int j = 0; j < TC_HASH_LANES; j++)\n        tc_lane_finish(a[j], c[j], j, &h1",
      "for (int j = 0; j < TC_HASH_LANES - 1; j++)\n        tc_lane_finish(a[j], c[j], j, &h1",
      HASH_VEC, "the block finish skips the last lane"),
    M("hash-final-rotation", "hash_portable.c",
      "uint64_t d1 = tc_fmix(s1 + tc_rotl64(s2, 29));",
      "uint64_t d1 = tc_fmix(s1 + tc_rotl64(s2, 28));", HASH_VEC, "wrong final rotation"),
    M("hash-block1-key", "hash_portable.c",
      "tc_block0_key[1] = tc_fmix(0 + tc_keys[TC_K_BLOCK2]);",
      "tc_block0_key[1] = tc_fmix(1 + tc_keys[TC_K_BLOCK2]);", HASH_VEC,
      "the one-block fast path uses block index 1 for the second word"),
    # ---- hash.c ----------------------------------------------------------------------------
    M("hash-tail-bytes-dropped", "hash.c",
      "k->block1(pad, (n + 7) / 8, h);", "k->block1(pad, n / 8, h);", HASH_VEC,
      "the last partial word of a short item is not hashed"),
    M("hash-block-index-dropped", "hash.c",
      "t[1] += tc_fmix64(h[1] ^ tc_fmix64(b + tc_keys[TC_K_BLOCK2]));",
      "t[1] += tc_fmix64(h[1] ^ tc_fmix64(tc_keys[TC_K_BLOCK2]));", HASH_ALL,
      "the streamed block term ignores the block index (blocks can be swapped)"),
    M("hash-meta-itemsize", "hash.c",
      "meta[m++] = numel * item->itemsize;", "meta[m++] = numel;", HASH_VEC,
      "metadata holds the element count, not the byte length"),
    M("hash-meta-sample", "hash.c",
      "meta[m++] = sample_count;", "meta[m++] = 0;", HASH_VEC,
      "sampled and full digests share metadata"),
    M("hash-sample-ge", "hash.c",
      "return sample_count >= numel ? 0 : sample_count;",
      "return sample_count > numel ? 0 : sample_count;",
      HASH_VEC + [["tests/test_hash_api.py"]],
      "N == numel is not the full-content digest (the one rule both hash paths call)"),
    M("hash-sample-frac", "hash.c",
      "if (frac >= count) {", "if (frac > count) {", HASH_VEC,
      "sampled element indices drift from floor(i * numel / N)"),
    M("hash-strided-offset", "hash.c",
      "            off += idx[d] * item->strides[d];",
      "            off += idx[d] * item->shape[d];",
      HASH_STRIDED, "strided items read the wrong elements"),
    M("hash-compact-misdetected", "hash.c",
      "        if (item->shape[d] != 1 && item->strides[d] != expect)\n            compact = 0;\n"
      "        expect *= item->shape[d];\n    }\n    sample_count = tc_effective",
      "        if (item->shape[d] != 1 && item->strides[d] != expect)\n            (void)0;\n"
      "        expect *= item->shape[d];\n    }\n    sample_count = tc_effective",
      HASH_STRIDED, "a strided item is hashed as if contiguous"),
    # ---- hash_batch.c, hash_avx2.c, hash_dispatch.c --------------------------------------
    M("batch-blocks-per-item", "hash_batch.c",
      "uint64_t blocks_per_item = (item_bytes + TC_HASH_BLOCK_BYTES - 1) / TC_HASH_BLOCK_BYTES;",
      "uint64_t blocks_per_item = item_bytes / TC_HASH_BLOCK_BYTES + 1;", HASH_ALL,
      "an item of whole blocks counts one block too many"),
    M("batch-block-index-dropped", "hash_batch.c",
      "sums[2 * i] += tc_fmix64(h[0] ^ tc_fmix64(b + tc_keys[TC_K_BLOCK1]));",
      "sums[2 * i] += tc_fmix64(h[0] ^ tc_fmix64(tc_keys[TC_K_BLOCK1]));", HASH_ALL,
      "the batch path's block term ignores the block index"),
    M("batch-first-thread-dropped", "hash_batch.c",
      "            for (int k = 0; k < threads; k++)\n                t += workers[k].sums[j];",
      "            for (int k = 1; k < threads; k++)\n                t += workers[k].sums[j];",
      HASH_ALL, "the first worker's block sums are lost in threaded batches"),
    M("batch-openmp-after-fork", "hash_batch.c",
      "if (!atomic_load_explicit(&omp_allowed, memory_order_relaxed) || getpid() != loaded_pid)",
      "if (!atomic_load_explicit(&omp_allowed, memory_order_relaxed))",
      [["tests/test_hash_api.py", "-k", "forked"]],
      "a process forked after torch's OpenMP team ran hashes on that team (which it lacks)"),
    M("batch-openmp-member-skipped", "hash_batch.c",
      "    if (k >= 0 && k < team->n)\n        work(&team->workers[k]);",
      "    if (k > 0 && k < team->n)\n        work(&team->workers[k]);",
      [["tests/test_hash_api.py", "-k", "smaller_than_asked"]],
      "the calling thread of an OpenMP team does no work (a team of one hashes nothing)"),
    M("avx2-w-dropped", "hash_avx2.c",
      "acc_a[v] = _mm256_add_epi64(acc_a[v], _mm256_add_epi64(w, m1));",
      "acc_a[v] = _mm256_add_epi64(acc_a[v], m1);", HASH_ALL,
      "the AVX2 stripe loop drops the data word term"),
    M("avx2-short-w-dropped", "hash_avx2.c",
      "acc_a[v] = _mm256_add_epi64(acc_a[v], _mm256_add_epi64(m1, w));",
      "acc_a[v] = _mm256_add_epi64(acc_a[v], m1);", HASH_ALL,
      "the AVX2 short-block kernel (257 B - 4 KiB items) drops the data word term"),
    M("dispatch-level-unchecked", "hash_dispatch.c",
      "if (level < TC_SIMD_PORTABLE || level > simd_best)",
      "if (level < TC_SIMD_PORTABLE || level > TC_SIMD_AVX512)", DISPATCH,
      "a SIMD level the CPU lacks can be selected"),
    # ---- dlpack.c -------------------------------------------------------------------------
    M("dlpack-strides-ignored", "dlpack.c",
      "v->strides[d] = t->strides ? t->strides[d] : expect;", "v->strides[d] = expect;",
      DLPACK, "a view's strides are ignored"),
    M("dlpack-contiguous-kept", "dlpack.c",
      "        if (t->shape[d] != 1 && v->strides[d] != expect)\n            v->contiguous = 0;",
      "        if (t->shape[d] != 1 && v->strides[d] != expect)\n            (void)0;",
      DLPACK, "a strided view is reported contiguous"),
    M("dlpack-numel-sum", "dlpack.c",
      "        n *= v->shape[d];", "        n += v->shape[d];", DLPACK,
      "element count summed instead of multiplied"),
    M("dlpack-itemsize-subbyte", "dlpack.c",
      "if (bits == 0 || bits % 8 != 0)", "if (bits == 0)", DLPACK,
      "a sub-byte dtype is accepted"),
    M("dlpack-ndim-boundary", "dlpack.c",
      "if (t->ndim < 0 || t->ndim > TC_MAX_NDIM) {", "if (t->ndim < 0 || t->ndim >= TC_MAX_NDIM) {",
      DLPACK, "a tensor with the most dimensions allowed is refused"),
    # ---- cuda.c, host side ----------------------------------------------------------------
    _cuda("cuda-failure-not-remembered",
          "        if (m.failure)\n            modules[nmodules++] = m;",
          "        if (0)\n            modules[nmodules++] = m;",
          "a context whose kernels failed to load retries the JIT on every call"),
    _cuda("cuda-jit-log-lost",
          'const char *log = error_log[0] ? error_log : info_log[0] ? info_log : "(empty)";',
          'const char *log = info_log[0] ? info_log : "(empty)";',
          "the JIT error log is left out of the reason"),
    _cuda("cuda-empty-batch",
          "if (x->ndim < 1 || x->shape[0] == 0)\n        return 0;",
          "if (x->ndim < 1)\n        return 0;",
          "an empty batch reaches the launches", gpu=True),
    _cuda("cuda-acc-rounding",
          "uint64_t acc_bytes = (16 * pl->batch + 255) / 256 * 256;",
          "uint64_t acc_bytes = 16 * pl->batch / 256 * 256;",
          "the digest accumulator is rounded down (scratch overlaps it)", gpu=True),
]


# ---- the scratch tree and its build ------------------------------------------------------

def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@dataclass
class Build:
    tree: Path
    compile_cmd: Dict[str, Tuple[str, str]]  # csrc/x.c -> (command, object path)
    link_cmd: str
    built_ext: Path      # what the link writes
    inplace_ext: Path    # what the tests import


def _build(tree: Path) -> Build:
    env = dict(os.environ, TORCHCACHE_C_NO_CUDA="1")
    env.pop("TORCHCACHE_C_WERROR", None)
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-v", "--force"],
                         cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"mutate: the scratch build failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    compile_cmd, link_cmd = {}, None
    for line in (out.stdout + "\n" + out.stderr).splitlines():
        if not re.match(r"^\S*(gcc|cc|clang)\s", line):
            continue
        args = shlex.split(line)
        if "-shared" in args:
            link_cmd = line
            built = Path(args[args.index("-o") + 1])
        elif "-c" in args:
            src = args[args.index("-c") + 1]
            rel = os.path.relpath(src if os.path.isabs(src) else tree / src, tree)
            compile_cmd[rel] = (line, args[args.index("-o") + 1])
    if link_cmd is None:
        sys.exit("mutate: no link command found in the build log")
    built = built if built.is_absolute() else tree / built
    inplace = tree / "torchcache_c" / built.name
    return Build(tree, compile_cmd, link_cmd, built, inplace)


def _sh(cmd: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _relink(b: Build) -> bool:
    if _sh(b.link_cmd, b.tree, 300).returncode:
        return False
    shutil.copy2(b.built_ext, b.inplace_ext)
    return True


def _merged(groups: List[List[str]]) -> List[str]:
    """One pytest call for several: the files, and one -k that ORs each call's expression
    with the module names of the calls that take a whole file (-k matches module names
    too). A -k may then also select same-named tests of the other files: more tests, never
    fewer. One call saves a torch start-up per group."""
    files, exprs, filtered = [], [], False
    for g in groups:
        gfiles = [x for x in g if x.endswith(".py")]
        files += [f for f in gfiles if f not in files]
        if "-k" in g:
            exprs.append(f"({g[g.index('-k') + 1]})")
            filtered = True
        else:
            exprs += [Path(f).stem for f in gfiles]
    return files + (["-k", " or ".join(exprs)] if filtered else [])


def _pytest(tree: Path, groups: List[List[str]], timeout: float) -> Tuple[str, str]:
    """('pass' | 'fail' | 'timeout', last lines) of the mutant's tests, in one pytest call."""
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    args = _merged(groups)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    try:
        out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"over {timeout:.0f} s"
    if out.returncode == 5:  # nothing selected: a stale selection is a bug of this list
        return "fail", "no tests selected"
    if out.returncode:
        tail = [ln for ln in out.stdout.splitlines() if ln.strip()][-3:]
        return "fail", " | ".join(tail)[-400:]
    return "pass", ""


def _key(groups: List[List[str]]) -> tuple:
    return tuple(tuple(g) for g in groups)


def _show(groups) -> str:
    return " ; ".join(" ".join(shlex.quote(x) for x in g) for g in groups)


def _have(requires: str) -> bool:
    if requires == "gpu":
        try:
            import torch
            return torch.cuda.is_available()
        except ImportError:
            return False
    if requires == "cc":
        return shutil.which(os.environ.get("CC", "gcc")) is not None
    return True


def _locate(m: Mutant, tree: Path) -> Optional[str]:
    text = (tree / "csrc" / m.file).read_text()
    n = text.count(m.find)
    return None if n == 1 else f"snippet found {n} times in csrc/{m.file}"


# ---- the Python side: mutmut over one shim module, in a scratch copy -----------------------

PY_TARGETS = {
    # module: the test files that guard it (mutmut runs, per mutant, those of their tests
    # that reach the mutated function). Files without subprocesses, for time; a file that
    # does not exist (yet) is left out.
    "keys": ["tests/test_keys.py", "tests/test_fingerprint.py", "tests/test_keywords.py",
             "tests/test_decorator.py", "tests/test_call_path.py", "tests/test_keys_mutants.py"],
    "cache": ["tests/test_cache_flow.py", "tests/test_cache_faults.py", "tests/test_call_path.py",
              "tests/test_keywords.py", "tests/test_decorator.py", "tests/test_device_tier.py",
              "tests/test_cache_mutants.py"],
}
# Seconds mutmut adds to a mutant's estimated test time before it multiplies by its
# timeout_multiplier (15) to get the wall-clock limit. mutmut's default (1 s) leaves out
# pytest's collection of the selected files in the forked child: on 2 loaded cores a mutant
# whose tests take 0.5 s was then stopped at 22 s and counted "timeout" (killed) although
# its tests pass (KeyTracker._due's `<` -> `<=` was one). 20 s gives such runs 5 minutes.
PY_TIMEOUT_CONSTANT = 20

# Left out of every mutmut run: tests that rewrite and re-import source files (30-80 s each
# on 2 loaded cores, and they reach most of keys.py, so mutmut would run them for nearly
# every mutant). The class-source and code-walk paths they guard are covered by faster
# tests of test_keys.py and test_keys_mutants.py.
PY_DESELECT = [
    "tests/test_keys.py::test_edits_outside_the_decorated_class_are_never_served_stale",
    "tests/test_fingerprint.py::test_changed_base_class_source_changes_key",
]


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


def run_python(module: str, children: int, json_out: Optional[str], keep: bool,
               sample: int = 0, tests: Optional[List[str]] = None,
               rerun: Optional[str] = None) -> int:
    """mutmut over torchcache_c/<module>.py with PY_TARGETS[module]; prints and returns the
    counts. The scratch copy gets its own [tool.mutmut] section (the repository's section,
    for `mutmut run` by hand, is for keys.py)."""
    started = time.monotonic()
    head = _git("rev-parse", "HEAD")  # what the scratch copy was made from
    module_commit = _git("log", "-1", "--format=%H", "--", f"torchcache_c/{module}.py")
    scratch = Path(tempfile.mkdtemp(prefix="tc-mutmut-"))
    tree = scratch / "tree"
    tree.mkdir()
    try:
        _copy_tree(tree)
        _build(tree)
        py = tree / "pyproject.toml"
        text = py.read_text()
        text = text[:text.index("[tool.mutmut]")] if "[tool.mutmut]" in text else text
        tests = tests or [t for t in PY_TARGETS[module] if (ROOT / t).exists()]
        deselect = [a for d in PY_DESELECT for a in ("--deselect", d)]
        text += ("[tool.mutmut]\n"
                 'source_paths = ["torchcache_c"]\n'
                 f'only_mutate = ["torchcache_c/{module}.py"]\n'
                 "pytest_add_cli_args = "
                 f"{_toml_list(['-p', 'no:cacheprovider', '-q', *deselect])}\n"
                 f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
                 'also_copy = ["csrc", "fuzz", "setup.py", "README.md", "docs"]\n'
                 f"timeout_constant = {PY_TIMEOUT_CONSTANT}\n")
        py.write_text(text)
        mutmut = str(Path(sys.executable).with_name("mutmut"))
        # One intra-op thread: mutmut forks each mutant's run from a process that has run
        # tests, and GNU OpenMP is not fork-safe: with torch's default thread pool a forked
        # child's first parallel op waits forever (futex, 0% CPU), and mutmut then counts a
        # "timeout" (killed) for a mutant that no test may have caught.
        env = dict(os.environ, PYTHONPATH=str(tree / "mutants"), OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        meta_path = tree / "mutants" / "torchcache_c" / f"{module}.py.meta"
        names: List[str] = []
        if sample or rerun:
            # Generate the mutants and collect mutmut's test map first: a `mutmut run` given
            # mutant names in a fresh tree stops early ("could not find any test case").
            probe = subprocess.run([mutmut, "run", "--max-children", str(children),
                                    f"torchcache_c.{module}.__no_such_mutant__"], cwd=tree,
                                   env=env, capture_output=True, text=True)
            (scratch / "probe.log").write_text(probe.stdout + probe.stderr)
            if not meta_path.exists():
                print(probe.stdout[-3000:], probe.stderr[-3000:])
                return 1
        if rerun:
            # The survivors of an earlier run (mutmut's names are stable while the module's
            # source is): did the tests added since kill them?
            names = sorted({n for f in rerun.split(",")
                            for key in ("survivors", "timeouts")
                            for n in json.loads(Path(f).read_text()).get(key, [])})
            print(f"mutmut torchcache_c/{module}.py: rechecking the {len(names)} survivors "
                  f"of {rerun}", flush=True)
        elif sample:
            every = sorted(json.loads(meta_path.read_text())["exit_code_by_key"])
            # Evenly spread and deterministic: the same tree gives the same sample.
            names = sorted({every[i * len(every) // sample]
                            for i in range(min(sample, len(every)))})
            print(f"mutmut torchcache_c/{module}.py: {len(every)} mutants; checking "
                  f"{len(names)}, evenly spread", flush=True)
        run = subprocess.run([mutmut, "run", "--max-children", str(children), *names],
                             cwd=tree, env=env, capture_output=True, text=True)
        (scratch / "run.log").write_text(run.stdout + run.stderr)
        from mutmut.stats import status_by_exit_code
        codes = json.loads(meta_path.read_text())["exit_code_by_key"] if meta_path.exists() \
            else {}
        checked = {k: status_by_exit_code[codes.get(k)] for k in (names or sorted(codes))}
        counts: Dict[str, int] = {}
        for status in checked.values():
            counts[status] = counts.get(status, 0) + 1
        detected = sum(counts.get(k, 0) for k in ("killed", "timeout", "segfault"))
        scored = sum(v for k, v in counts.items() if k not in ("not checked", "skipped"))
        score = detected / scored if scored else 0.0
        survivors = sorted(k for k, v in checked.items()
                           if v in ("survived", "no tests", "suspicious"))
        elapsed = time.monotonic() - started
        print(f"mutmut torchcache_c/{module}.py: {json.dumps(counts)}; detected "
              f"{score:.1%} of {scored}; {elapsed:.0f} s")
        for name in survivors:
            print(f"  {checked[name].upper()}: {name}")
        if run.returncode and not scored:
            print(run.stdout[-3000:], run.stderr[-3000:])
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(json_out).write_text(json.dumps({
                "command": f"python tools/mutate.py --python {module}"
                           + (f" --sample {sample}" if sample else "")
                           + (f" --rerun {rerun}" if rerun else ""),
                "commit": head, "module_commit": module_commit,
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load": os.getloadavg(), "seconds": round(elapsed), "tests": tests,
                "deselected": PY_DESELECT, "children": children,
                "mutants_total": len(codes), "checked": len(checked), "counts": counts,
                "score": round(score, 4), "survivors": survivors,
                "timeouts": sorted(k for k, v in checked.items() if v == "timeout"),
                "statuses": checked,
            }, indent=1) + "\n")
        return 0 if score >= 0.9 else 1
    finally:
        if keep:
            print(f"mutate: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _write_c_results(a, results, started, complete):
    counts: Dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    scored = counts.get("killed", 0) + counts.get("survived", 0)
    score = counts.get("killed", 0) / scored if scored else 0.0
    elapsed = time.monotonic() - started
    if complete:
        print(f"mutate: {len(results)} mutants: " + ", ".join(f"{k} {v}" for k, v in
                                                          sorted(counts.items()))
              + f"; score {score:.1%} of {scored}; {elapsed:.0f} s")
    if a.json:
        import platform
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({
            "command": "python tools/mutate.py" + (f" --only {a.only}" if a.only else ""),
            "complete": complete,
            "commit": _git("rev-parse", "HEAD"),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": platform.machine(), "load": os.getloadavg(),
            "seconds": round(elapsed), "counts": counts, "score": round(score, 4),
            "mutants": results,
        }, indent=1) + "\n")
    return counts, score


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="",
                    help="run the mutants whose id starts with one of these (comma-separated)")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per mutant (tests)")
    ap.add_argument("--list", action="store_true", help="list the mutants and check snippets")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch tree")
    ap.add_argument("--baseline", action="store_true",
                    help="first run every selection on the unmutated build (they must pass; "
                    "without it, the full suite on the same commit stands for the baseline)")
    ap.add_argument("--python", choices=sorted(PY_TARGETS),
                    help="run mutmut over torchcache_c/<module>.py instead of the C list")
    ap.add_argument("--children", type=int, default=2, help="mutmut's parallel test runs")
    ap.add_argument("--tests", default="", help="with --python: these test files instead "
                    "(comma-separated)")
    ap.add_argument("--sample", type=int, default=0,
                    help="check about this many mutants, evenly spread (0: all of them)")
    ap.add_argument("--rerun", help="with --python: check again the survivors and timeouts "
                    "listed in these results JSON files (comma-separated; written by earlier "
                    "--json runs)")
    a = ap.parse_args(argv)
    if a.python:
        return run_python(a.python, a.children, a.json, a.keep, a.sample,
                          a.tests.split(",") if a.tests else None, a.rerun)
    prefixes = tuple(x for x in a.only.split(",") if x) or ("",)
    chosen = [m for m in MUTANTS if m.id.startswith(prefixes)]
    assert len({m.id for m in MUTANTS}) == len(MUTANTS), "duplicate mutant id"
    if a.list:
        for m in chosen:
            stale = _locate(m, ROOT)
            print(f"{m.id:32s} csrc/{m.file:16s} {'stale: ' + stale if stale else 'ok'}"
                  f"{'  (needs ' + m.requires + ')' if m.requires else ''}")
        return 0

    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="tc-mutate-"))
    tree = scratch / "tree"
    tree.mkdir()
    results = []
    try:
        _copy_tree(tree)
        print(f"mutate: scratch tree {tree}; building once", flush=True)
        b = _build(tree)
        backup = scratch / "backup"
        backup.mkdir()
        shutil.copy2(b.inplace_ext, backup / "ext.so")
        if a.baseline:
            print(f"mutate: baseline: {len({_key(m.tests) for m in chosen})} test selections",
                  flush=True)
        baseline = {}
        for sel in ({_key(m.tests) for m in chosen if _have(m.requires)} if a.baseline
                    else ()):
            t0 = time.monotonic()
            state, detail = _pytest(tree, [list(g) for g in sel], a.timeout)
            baseline[sel] = state
            print(f"  {state:7s} {time.monotonic() - t0:5.1f}s  {_show(sel)}  {detail}",
                  flush=True)
        for m in chosen:
            t0 = time.monotonic()
            rec = {"id": m.id, "file": f"csrc/{m.file}", "why": m.why, "tests": m.tests}
            stale = _locate(m, tree)
            src_rel = f"csrc/{m.file}"
            if stale:
                rec.update(status="stale", detail=stale)
            elif not _have(m.requires):
                rec.update(status="skipped", detail=f"needs {m.requires}")
            elif a.baseline and baseline.get(_key(m.tests)) != "pass":
                rec.update(status="skipped", detail="its tests fail on the unmutated build")
            elif src_rel not in b.compile_cmd:
                rec.update(status="stale", detail=f"{src_rel} is not in the build")
            else:
                path = tree / src_rel
                original = path.read_text()
                cmd, obj = b.compile_cmd[src_rel]
                obj_path = Path(obj) if os.path.isabs(obj) else tree / obj
                shutil.copy2(obj_path, backup / "obj.o")
                try:
                    path.write_text(original.replace(m.find, m.replace, 1))
                    cc = _sh(cmd, tree, 300)
                    if cc.returncode or not _relink(b):
                        rec.update(status="invalid", detail=(cc.stderr or "link failed")[-300:])
                    else:
                        state, detail = _pytest(tree, m.tests, a.timeout)
                        rec.update(status="survived" if state == "pass" else "killed",
                                   detail=detail if state != "pass" else "",
                                   by=state)
                finally:
                    path.write_text(original)
                    shutil.copy2(backup / "obj.o", obj_path)
                    shutil.copy2(backup / "ext.so", b.inplace_ext)
            rec["seconds"] = round(time.monotonic() - t0, 1)
            results.append(rec)
            _write_c_results(a, results, started, complete=False)
            line = f"{rec['status']:8s} {rec['seconds']:6.1f}s  {m.id:30s} {rec.get('detail', '')}"
            print(line[:220], flush=True)
    finally:
        if a.keep:
            print(f"mutate: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    counts, score = _write_c_results(a, results, started, complete=True)
    for r in results:
        if r["status"] in ("survived", "stale"):
            print(f"  {r['status'].upper()}: {r['id']} ({r['why']}) {r.get('detail', '')}")
    return 1 if counts.get("survived") or counts.get("stale") else 0


if __name__ == "__main__":
    sys.exit(main())
