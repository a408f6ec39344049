"""python -m torchcache_c info|verify|clear|prune|compact DIR: tools for cache directories.

DIR is a cache root (the decorator's persistent_cache_dir, one subdirectory per
module key) or one module-key directory.  A module-key directory holds segment
files (docs/format.md, section 1), the decorator's layout-*.json sidecars, its
module.json metadata (meta.py) and nothing else; the tools recognise ours by
those names and never follow links.

Exit status: 0 success; 1 verify found corrupt records; 2 an error (DIR is
missing or not a cache, clear or prune refused).  docs/cli.md describes each
command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._C import Store
from .meta import META_NAME, META_TMP, read_module_meta
from .compact import COMPACT_TMP, compact_module, many_segments_warning, summary

# docs/format.md, section 1: the reader's rule, so that clear removes exactly
# what a store would read.
_SEGMENT = re.compile(r"seg-.+\.tcs\Z", re.DOTALL)
# cache.py: layout sidecars, and the temporary files they are written through.
_LAYOUT = re.compile(r"layout-.+\.json\Z", re.DOTALL)
# Temporary files: ".layout-X.json.<pid>.<thread id>.tmp" (torchcache_c 0.1) and
# ".layout-X.json.<pid>.<16 hex>.tmp" (sidecar.write_json_atomic).
_LAYOUT_TMP = re.compile(r"\.layout-.+\.json\.\d+\.[0-9a-f]+\.tmp\Z", re.DOTALL)
# docs/format.md, section 9: a segment's index file and its temporary files
# (csrc/store_index.c): derived data, removed with the segments.
_INDEX = re.compile(r"\.?idx-.+\.tci(\.\d+\.[0-9a-f]{16}\.tmp)?\Z", re.DOTALL)

EXIT_OK, EXIT_CORRUPT, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """A message for stderr and exit status 2."""


@dataclass
class ModuleDir:
    """One module-key directory and what lies in it (links are never followed)."""

    path: Path
    segments: List[str] = field(default_factory=list)
    layouts: List[str] = field(default_factory=list)
    layout_tmps: List[str] = field(default_factory=list)
    indexes: List[str] = field(default_factory=list)  # segment index files (format.md, 9)
    meta_files: List[str] = field(default_factory=list)  # module.json and its temporaries
    foreign: List[str] = field(default_factory=list)
    bytes: int = 0
    newest_mtime: float = 0.0  # of our files
    meta: Optional[Dict[str, Any]] = None  # module.json, validated (meta.py)

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def ours(self) -> List[str]:
        # module.json last: a directory half removed still says whose it was.
        return (self.segments + self.indexes + self.layouts + self.layout_tmps
                + self.meta_files[::-1])

    @property
    def last_used(self) -> float:
        """module.json's last_used; without it, the newest mtime of our files."""
        return self.meta["last_used"] if self.meta is not None else self.newest_mtime


def _is_ours(name: str, directory: Path) -> bool:
    """A regular file `name` in `directory` is ours.  "module.json" is a common name,
    so that one is ours only when it holds valid torchcache_c metadata (meta.py)."""
    if name == META_NAME:
        return read_module_meta(directory) is not None
    return bool(_SEGMENT.match(name) or _INDEX.match(name) or _LAYOUT.match(name)
                or _LAYOUT_TMP.match(name)
                or META_TMP.match(name) or COMPACT_TMP.match(name))


def _scan_module(path: Path) -> ModuleDir:
    m = ModuleDir(path)
    with os.scandir(path) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and entry.name == META_NAME:
                m.meta = read_module_meta(path)  # read once: ours iff valid
                ours = m.meta is not None
            else:
                ours = stat.S_ISREG(st.st_mode) and _is_ours(entry.name, path)
            if not ours:
                m.foreign.append(entry.name)
                continue
            m.bytes += st.st_size
            m.newest_mtime = max(m.newest_mtime, st.st_mtime)
            if _SEGMENT.match(entry.name):
                m.segments.append(entry.name)
            elif _LAYOUT.match(entry.name):
                m.layouts.append(entry.name)
            elif _LAYOUT_TMP.match(entry.name):
                m.layout_tmps.append(entry.name)
            elif _INDEX.match(entry.name):
                m.indexes.append(entry.name)
            else:
                m.meta_files.append(entry.name)
    for names in (m.segments, m.indexes, m.layouts, m.layout_tmps, m.meta_files, m.foreign):
        names.sort()
    return m


@dataclass
class Cache:
    """DIR resolved: its module-key directories, and what else the root holds."""

    root: Path
    modules: List[ModuleDir]
    is_root: bool
    foreign: List[str]      # root entries that are not module-key directories
    empty_dirs: List[str]   # empty subdirectories of a root


def _has_own_files(path: Path) -> bool:
    with os.scandir(path) as it:
        return any(e.is_file(follow_symlinks=False) and _is_ours(e.name, path) for e in it)


def resolve(dir_arg: str) -> Cache:
    """Classifies DIR as a module-key directory or a cache root; CliError otherwise."""
    path = Path(dir_arg)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CliError(f"{dir_arg}: no such directory") from None
    except OSError as exc:
        raise CliError(f"{dir_arg}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"{dir_arg}: not a directory")
    try:
        if _has_own_files(path):
            return Cache(path, [_scan_module(path)], False, [], [])
        modules, foreign, empty = [], [], []
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                sub = Path(entry.path)
                if _has_own_files(sub):
                    modules.append(_scan_module(sub))
                    continue
                with os.scandir(sub) as inner:
                    if next(inner, None) is None:
                        empty.append(entry.name)
                        continue
            foreign.append(entry.name)
    except PermissionError as exc:
        raise CliError(f"{exc.filename}: permission denied") from None
    if not modules:
        raise CliError(
            f"{dir_arg}: not a torchcache_c cache (no seg-*.tcs, layout-*.json or "
            f"{META_NAME} files in it or in its subdirectories)")
    return Cache(path, modules, True, foreign, empty)


def _open(m: ModuleDir) -> Store:
    # refresh_ms=0: a tool reads the directory as it is now.
    return Store(str(m.path), refresh_ms=0)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _table(rows: List[List[str]], header: List[str], left: Sequence[int] = (0,),
           total: bool = True) -> str:
    """Columns in `left` are left-aligned, the others right-aligned; with `total`
    the last row is set off by a rule."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(  # noqa: E731
        c.ljust(w) if i in left else c.rjust(w)
        for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
    rule = "  ".join("-" * w for w in widths)
    if not total:
        return "\n".join([fmt(header), rule] + [fmt(r) for r in rows])
    return "\n".join([fmt(header), rule] + [fmt(r) for r in rows[:-1]] + [rule, fmt(rows[-1])])


def _iso(t: Optional[float]) -> Optional[str]:
    """A unix time as ISO-8601 local time with its UTC offset, to the second."""
    if t is None:
        return None
    try:
        return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def _meta_fields(m: ModuleDir) -> Dict[str, Any]:
    meta = m.meta or {}
    return {"qualname": meta.get("qualname"),
            "created": meta.get("created"), "created_iso": _iso(meta.get("created")),
            "last_used": meta.get("last_used"), "last_used_iso": _iso(meta.get("last_used"))}


# ---- info ------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    if _is_remote(args.dir):  # issue 15: a remote URL
        return _remote_info(args)
    cache = resolve(args.dir)
    modules: List[Dict[str, object]] = []
    for m in cache.modules:
        with _open(m) as store:
            st = store.stats()
        modules.append({"module_key": m.key, "path": str(m.path), "entries": st["records"],
                        "bytes": m.bytes, "segments": len(m.segments),
                        "corrupt": st["corrupt"], "layouts": len(m.layouts),
                        **_meta_fields(m)})
    totals = {k: sum(int(m[k]) for m in modules)  # type: ignore[call-overload]
              for k in ("entries", "bytes", "segments", "corrupt", "layouts")}
    warning = many_segments_warning([int(m["segments"]) for m in modules])  # type: ignore
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        print(json.dumps({"root": str(cache.root), "modules": modules, "totals": totals},
                         indent=2))
        return EXIT_OK
    header = ["module key", "entries", "size", "segments", "corrupt", "layouts", "last used",
              "created", "class"]
    rows = [[str(m["module_key"]), str(m["entries"]), _human(int(m["bytes"])),  # type: ignore
             str(m["segments"]), str(m["corrupt"]), str(m["layouts"]),
             str(m["last_used_iso"] or "-"), str(m["created_iso"] or "-"),
             str(m["qualname"] or "-")] for m in modules]
    rows.append(["total", str(totals["entries"]), _human(totals["bytes"]),
                 str(totals["segments"]), str(totals["corrupt"]), str(totals["layouts"]),
                 "", "", ""])
    print(f"{cache.root}: {len(modules)} module key(s)")
    print(_table(rows, header, left=(0, 6, 7, 8)))
    if totals["corrupt"]:
        print("corrupt records are skipped, never served; `verify` lists them")
    return EXIT_OK


# ---- verify ----------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    if _is_remote(args.dir):  # issue 15: a remote URL
        return _remote_verify(args)
    cache = resolve(args.dir)
    results = []
    for m in cache.modules:
        with _open(m) as store:
            r = store.verify()
        problems = [{"segment": seg, "offset": off, "reason": why}
                    for seg, off, why in r["problems"]]
        results.append({"module_key": m.key, "path": str(m.path), "records": r["records"],
                        "corrupt": r["corrupt"], "torn": r["torn"], "bytes": r["bytes"],
                        "segments": r["segments"], "problems": problems})
    corrupt = sum(r["corrupt"] for r in results)
    if args.json:
        print(json.dumps({"root": str(cache.root), "modules": results,
                          "ok": corrupt == 0}, indent=2))
    else:
        for r in results:
            print(f"{r['module_key']}: {r['records']} records verified ({_human(r['bytes'])}) "
                  f"in {r['segments']} segment(s), {r['corrupt']} corrupt"
                  + (f", {r['torn']} torn tail(s)" if r["torn"] else ""))
            for p in r["problems"]:
                print(f"  {p['segment']} @ {p['offset']}: {p['reason']}")
        print("OK" if corrupt == 0 else
              f"FAILED: {corrupt} corrupt record(s); they are never served (a corrupt "
              "record reads as a miss and is recomputed)")
    return EXIT_OK if corrupt == 0 else EXIT_CORRUPT


# ---- clear -----------------------------------------------------------------------

def _confirm(prompt: str) -> bool:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _removal_confirmed(what: str, args: argparse.Namespace,
                       show: Optional[Callable[[], None]] = None) -> bool:
    """The one confirmation rule of clear and both prunes: --yes (or a dry run, where
    the command has one) proceeds; otherwise a terminal is asked (after `show` lists
    what would go) and anything else is refused with what to pass.  False: the user
    said no, and "nothing removed" has been printed."""
    dry_run = getattr(args, "dry_run", None)
    if args.yes or dry_run:
        return True
    if not sys.stdin.isatty():
        hint = " (or --dry-run to see the list)" if dry_run is not None else ""
        raise CliError(f"would remove {what}; stdin is not a terminal, so pass --yes "
                       f"to confirm{hint}")
    if show is not None:
        show()
    if _confirm(f"Remove {what}? [y/N] "):
        return True
    print("nothing removed")
    return False


def _remove_module(m: ModuleDir) -> int:
    """Unlinks our files through a descriptor of the directory opened without
    following links, so a directory swapped for a link is never entered."""
    return _remove_files(m)[0]


def _remove_files(m: ModuleDir) -> tuple[int, int]:
    """_remove_module's work: (files, bytes) removed.  Only the names found by the
    scan are removed, so files a writer creates meanwhile stay."""
    removed = nbytes = 0
    fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in m.ours:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    os.unlink(name, dir_fd=fd)
                    removed += 1
                    nbytes += st.st_size
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    return removed, nbytes


def _rmdir_if_empty(path: Path) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def cmd_clear(args: argparse.Namespace) -> int:
    if os.path.islink(args.dir):
        raise CliError(f"{args.dir} is a symbolic link; clear never follows links (pass the "
                       "directory it points to)")
    cache = resolve(args.dir)
    foreign = [str(Path(m.path, n)) for m in cache.modules for n in m.foreign]
    foreign += [str(Path(cache.root, n)) for n in cache.foreign]
    if foreign and not args.force:
        shown = "\n  ".join(foreign[:10]) + ("\n  ..." if len(foreign) > 10 else "")
        raise CliError(
            f"{args.dir} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that "
            f"torchcache_c did not write:\n  {shown}\nrefusing to clear it; pass --force to "
            "remove only the cache files and leave those in place")
    nfiles = sum(len(m.ours) for m in cache.modules)
    nbytes = sum(m.bytes for m in cache.modules)
    what = (f"{nfiles} cache file(s), {_human(nbytes)}, of {len(cache.modules)} module key(s) "
            f"under {cache.root}")
    if not _removal_confirmed(what, args):
        return EXIT_OK
    removed = sum(_remove_module(m) for m in cache.modules)
    dirs = 0
    if cache.is_root:
        dirs += sum(_rmdir_if_empty(m.path) for m in cache.modules)
        dirs += sum(_rmdir_if_empty(cache.root / n) for n in cache.empty_dirs)
    print(f"removed {removed} file(s) ({_human(nbytes)}) and {dirs} empty director"
          f"{'y' if dirs == 1 else 'ies'}"
          + (f"; left {len(foreign)} other entr{'y' if len(foreign) == 1 else 'ies'} in place"
             if foreign else ""))
    return EXIT_OK


# ---- prune -----------------------------------------------------------------------

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4, "P": 1024 ** 5}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGTP])(?:I?B)?|B)?\Z", re.IGNORECASE)
_DAY = 86400.0


def parse_size(text: str) -> int:
    """Bytes from "123", "500M", "10G", "1.5GiB", "2TB" (K, M, G, T, P: powers of 1024)."""
    m = _SIZE.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: pass a number of bytes, optionally with a suffix "
            "K, M, G or T (powers of 1024), e.g. 500M or 10G")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of days: pass a number >= 0, e.g. 30 or 0.5")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a count: pass a whole number >= 0, e.g. 3")
    return value


def _plan_prune(modules: List[ModuleDir], now: float, older_than: Optional[float],
                max_size: Optional[int],
                keep: int) -> tuple[List[ModuleDir], Dict[str, str], int]:
    """Which module directories to remove, least recently used first; the rule that
    chose each; the bytes the kept ones hold."""
    recent_first = sorted(modules, key=lambda m: (-m.last_used, m.key))
    candidates = recent_first[keep:]  # --keep protects the most recently used
    rule: Dict[str, str] = {}
    if older_than is not None:
        cutoff = now - older_than * _DAY
        for m in candidates:
            if m.last_used <= cutoff:
                rule[m.key] = "older-than"
    total = sum(m.bytes for m in modules if m.key not in rule)
    if max_size is not None:
        for m in reversed(candidates):
            if total <= max_size:
                break
            if m.key not in rule:
                rule[m.key] = "max-size"
                total -= m.bytes
    return [m for m in reversed(recent_first) if m.key in rule], rule, total


def _prune_entry(m: ModuleDir, rule: Optional[str] = None) -> Dict[str, Any]:
    entry = {"module_key": m.key, "path": str(m.path), "bytes": m.bytes,
             "last_used": m.last_used, "last_used_iso": _iso(m.last_used),
             "last_used_from": "module.json" if m.meta is not None else "mtime",
             "qualname": m.meta["qualname"] if m.meta is not None else None}
    if rule is not None:
        entry["rule"] = rule
    return entry


def _prune_one(m: ModuleDir) -> tuple[int, Optional[str]]:
    """Removes our files of m, then the directory: (bytes freed, why it was left
    or None).  Nothing is removed when module.json says it was used since the scan."""
    fresh = read_module_meta(m.path)
    if fresh is not None and (m.meta is None or fresh["last_used"] > m.meta["last_used"]):
        return 0, "used again since the scan; nothing removed"
    _, nbytes = _remove_files(m)
    try:
        os.rmdir(m.path)
        return nbytes, None
    except OSError:
        pass
    if m.foreign:
        return nbytes, "holds files torchcache_c did not write (left in place by --force)"
    return nbytes, "new files appeared while pruning (a process is writing to it); they are kept"


def cmd_prune(args: argparse.Namespace) -> int:
    if args.older_than is None and args.max_size is None:
        raise CliError(
            "no rule given: pass --older-than DAYS (remove module keys not used for DAYS "
            "days) and/or --max-size BYTES (remove the least recently used module keys "
            "until the cache holds at most BYTES, e.g. 10G); --keep N only protects the N "
            "most recently used module keys from those rules")
    if _is_remote(args.dir):  # issue 15: a remote URL
        return _remote_prune(args)
    if os.path.islink(args.dir):
        raise CliError(f"{args.dir} is a symbolic link; prune never follows links (pass the "
                       "directory it points to)")
    cache = resolve(args.dir)
    if not cache.is_root:
        raise CliError(
            f"{args.dir} is one module-key directory; prune removes module-key directories "
            f"from a cache root: pass the root ({cache.root.parent}), or use `clear` to "
            "empty this directory")
    now = time.time()
    removal, rule, kept_bytes = _plan_prune(cache.modules, now, args.older_than,
                                            args.max_size, args.keep)
    before = sum(m.bytes for m in cache.modules)
    foreign = [str(Path(m.path, n)) for m in removal for n in m.foreign]
    if foreign and not args.force:
        shown = "\n  ".join(foreign[:10]) + ("\n  ..." if len(foreign) > 10 else "")
        raise CliError(
            f"module-key directories to prune hold {len(foreign)} "
            f"entr{'y' if len(foreign) == 1 else 'ies'} that torchcache_c did not write:\n  "
            f"{shown}\nrefusing to prune; pass --force to remove only the cache files of "
            "those directories and leave the directories and those entries in place")
    kept = [m for m in cache.modules if m.key not in rule]
    nbytes = sum(m.bytes for m in removal)
    short = None
    if args.max_size is not None and kept_bytes > args.max_size:
        short = (f"the cache still holds {_human(kept_bytes)} ({kept_bytes} bytes), more than "
                 f"--max-size {args.max_size}, because --keep {args.keep} keeps the most "
                 "recently used module keys")
    what = (f"{len(removal)} of {len(cache.modules)} module key(s), {_human(nbytes)} "
            f"({nbytes} bytes), under {cache.root}")
    show = None if args.json else (lambda: _print_prune(removal, rule, {}, "remove"))
    if removal and not _removal_confirmed(what, args, show):
        return EXIT_OK
    left: Dict[str, str] = {}
    freed = 0
    if not args.dry_run:
        for m in removal:
            got, why = _prune_one(m)
            freed += got
            if why is not None:
                left[m.key] = why
    else:
        freed = nbytes
    if args.json:
        done = [_prune_entry(m, rule[m.key]) for m in removal if m.key not in left]
        print(json.dumps({
            "root": str(cache.root), "dry_run": args.dry_run,
            "rules": {"older_than_days": args.older_than, "max_size": args.max_size,
                      "keep": args.keep},
            "removed": done,
            "left": [dict(_prune_entry(m, rule[m.key]), why=left[m.key])
                     for m in removal if m.key in left],
            "kept": [_prune_entry(m) for m in sorted(kept, key=lambda m: -m.last_used)],
            "bytes_before": before, "bytes_freed": freed, "bytes_after": before - freed,
            "note": short}, indent=2))
        return EXIT_OK
    if not removal:
        print(f"nothing to prune: {len(cache.modules)} module key(s), {_human(before)}, under "
              f"{cache.root}; none matches the rules")
    elif args.dry_run:
        _print_prune(removal, rule, {}, "would remove")
        print(f"dry run: would remove {len(removal)} of {len(cache.modules)} module key(s) "
              f"under {cache.root} and free {_human(freed)} ({freed} bytes); nothing was "
              "changed")
    else:
        _print_prune(removal, rule, left, "removed")
        n = len(removal) - len(left)
        print(f"removed {n} module key(s) and freed {_human(freed)} ({freed} bytes); "
              f"{len(kept) + len(left)} module key(s), {_human(before - freed)}, remain")
    if short:
        print(f"note: {short}")
    return EXIT_OK


def _print_prune(removal: List[ModuleDir], rule: Dict[str, str], left: Dict[str, str],
                 verb: str) -> None:
    rows = [[verb if m.key not in left else "left", m.key, _human(m.bytes),
             (_iso(m.last_used) or "-") + ("" if m.meta is not None else " *"),
             rule[m.key], m.meta["qualname"] if m.meta is not None else "-"]
            for m in removal]
    print(_table(rows, ["", "module key", "size", "last used", "rule", "class"],
                 left=(0, 1, 3, 4, 5), total=False))
    if any(m.meta is None for m in removal):
        print(f"* no valid {META_NAME}: the newest modification time of its files")
    for m in removal:
        if m.key in left:
            print(f"left {m.path} in place: {left[m.key]}")




# ---- compact ---------------------------------------------------------------------

def cmd_compact(args: argparse.Namespace) -> int:
    cache = resolve(args.dir)
    results = [(str(m.path), compact_module(str(m.path), args.min_idle)) for m in cache.modules]
    if args.json:
        print(json.dumps({"root": str(cache.root),
                          "modules": [{"path": p, **r} for p, r in results]}, indent=2))
    else:
        for path, r in results:
            print(summary(path, r))
    return EXIT_OK


# ---- remote URLs (issue 15, docs/remote.md): info, verify, prune --------------------

def _is_remote(arg: str) -> bool:
    return arg.startswith(("s3://", "gs://", "az://", "abfs://", "abfss://", "file://"))


def _remote(arg: str) -> Any:
    from . import remote

    error = remote.missing_client_error(arg)
    if error is not None:
        raise CliError(str(error))
    return remote


def _remote_scan(args: argparse.Namespace) -> Any:
    remote = _remote(args.dir)
    try:
        return remote, remote.scan_remote(args.dir)
    except Exception as exc:  # the client's errors: unreachable, denied, no bucket
        raise CliError(f"{args.dir}: cannot list the remote: {exc}") from None


def _remote_info(args: argparse.Namespace) -> int:
    remote, _ = _remote_scan(args)
    data = remote.cli_info(args.dir)
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    mods = data["modules"]
    header = ["module key", "entries", "size", "chunks", "orphans", "layouts", "last modified"]
    rows = [[m["module_key"], str(m["entries"]), _human(m["bytes"]), str(m["chunks"]),
             str(m["orphan_chunks"]), str(m["layouts"]), _iso(m["last_modified"]) or "-"]
            for m in mods]
    rows.append(["total", str(sum(m["entries"] for m in mods)),
                 _human(sum(m["bytes"] for m in mods)), str(sum(m["chunks"] for m in mods)),
                 str(sum(m["orphan_chunks"] for m in mods)),
                 str(sum(m["layouts"] for m in mods)), ""])
    print(f"{args.dir}: {len(mods)} module key(s)")
    print(_table(rows, header, left=(0, 6)))
    return EXIT_OK


def _remote_verify(args: argparse.Namespace) -> int:
    remote, _ = _remote_scan(args)
    try:
        data = remote.cli_verify(args.dir)
    except Exception as exc:
        raise CliError(f"{args.dir}: {exc}") from None
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for r in data["modules"]:
            print(f"{r['module_key']}: {r['records']} records verified ({_human(r['bytes'])}) "
                  f"in {r['chunks']} chunk(s), {r['corrupt']} problem(s)")
            for p in r["problems"]:
                where = f" @ {p['offset']}" if "offset" in p else ""
                print(f"  {p['object']}{where}: {p['reason']}")
        print("OK" if data["ok"] else "FAILED: damaged or missing objects; their records are "
              "never served (readers compute those items)")
    return EXIT_OK if data["ok"] else EXIT_CORRUPT


def _remote_prune(args: argparse.Namespace) -> int:
    remote, modules = _remote_scan(args)
    now = time.time()
    removal, rule, kept_bytes = _plan_prune(modules, now, args.older_than, args.max_size,
                                            args.keep)
    nbytes = sum(m.bytes for m in removal)
    what = (f"{len(removal)} of {len(modules)} module key(s), {_human(nbytes)} ({nbytes} "
            f"bytes), under {args.dir}")
    if removal and not _removal_confirmed(what, args):
        return EXIT_OK
    freed = 0
    if not args.dry_run:
        for m in removal:
            try:
                freed += remote.cli_delete(args.dir, m)
            except Exception as exc:
                raise CliError(f"{args.dir}: removing {m.key} failed: {exc}") from None
    entries = [{"module_key": m.key, "bytes": m.bytes, "last_modified": m.last_used,
                "rule": rule[m.key]} for m in removal]
    if args.json:
        print(json.dumps({"url": args.dir, "dry_run": args.dry_run, "removed": entries,
                          "bytes_freed": 0 if args.dry_run else freed,
                          "bytes_after": kept_bytes}, indent=2))
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for e in entries:
        print(f"{verb} {e['module_key']} ({_human(e['bytes'])}, last modified "
              f"{_iso(e['last_modified']) or '-'}, {e['rule']})")
    print(f"{verb} {len(removal)} of {len(modules)} module key(s), {_human(nbytes)}"
          + ("; nothing was changed" if args.dry_run else ""))
    return EXIT_OK


# ---- entry point -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchcache_c",
        description="Inspect, verify, prune or remove torchcache_c cache directories. DIR "
                    "is a cache root (one subdirectory per module key) or one module-key "
                    "directory.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="entries, size, corrupt records, class and last use "
                       "per module key")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("verify", help="check every record's checksums; exit 1 if any is corrupt")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("clear", help="remove the cache files (and then empty directories)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true",
                   help="clear even if DIR holds other files (they are left in place)")
    p.set_defaults(func=cmd_clear)
    p = sub.add_parser(
        "prune", help="remove whole module-key directories, least recently used first",
        description="Remove whole module-key directories of a cache root, least recently "
                    f"used first (last_used from {META_NAME}, else the newest modification "
                    "time of the directory's files). Pass --older-than and/or --max-size.")
    p.add_argument("dir", metavar="DIR", help="a cache root")
    p.add_argument("--older-than", type=_days, metavar="DAYS",
                   help="remove module keys not used for DAYS days (fractions allowed)")
    p.add_argument("--max-size", type=parse_size, metavar="BYTES",
                   help="remove least recently used module keys until the cache holds at "
                        "most BYTES (suffixes K, M, G, T: powers of 1024, e.g. 10G)")
    p.add_argument("--keep", type=_count, default=0, metavar="N",
                   help="never remove the N most recently used module keys, whatever the "
                        "other rules say")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="print what would be removed; change nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true",
                   help="prune directories that hold other files too (only our files are "
                        "removed; those directories and files stay)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("compact", help="merge the segments of finished writers into one")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--min-idle", type=int, default=3600, metavar="SECONDS",
                   help="a segment of another host counts as finished after this long "
                        "unchanged (default 3600)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_compact)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"torchcache-c {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"torchcache-c {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
