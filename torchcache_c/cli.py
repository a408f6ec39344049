"""python -m torchcache_c info|verify|clear|compact DIR: operational tools for cache directories.

DIR is a cache root (the decorator's persistent_cache_dir, one subdirectory per
module key) or one module-key directory.  A module-key directory holds segment
files (docs/format.md, section 1), the decorator's layout-*.json sidecars and
nothing else; the tools recognise ours by those names and never follow links.

Exit status: 0 success; 1 verify found corrupt records; 2 an error (DIR is
missing or not a cache, clear refused).  docs/cli.md describes each command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ._C import Store
from .compact import COMPACT_TMP, compact_module, many_segments_warning, summary

# docs/format.md, section 1: the reader's rule, so that clear removes exactly
# what a store would read.
_SEGMENT = re.compile(r"seg-.+\.tcs\Z", re.DOTALL)
# cache.py: layout sidecars, and the temporary files they are written through.
_LAYOUT = re.compile(r"layout-.+\.json\Z", re.DOTALL)
_LAYOUT_TMP = re.compile(r"\.layout-.+\.json\.\d+\.\d+\.tmp\Z", re.DOTALL)

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
    foreign: List[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def ours(self) -> List[str]:
        return self.segments + self.layouts + self.layout_tmps


def _is_ours(name: str) -> bool:
    return bool(_SEGMENT.match(name) or _LAYOUT.match(name) or _LAYOUT_TMP.match(name)
                or COMPACT_TMP.match(name))


def _scan_module(path: Path) -> ModuleDir:
    m = ModuleDir(path)
    with os.scandir(path) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not _is_ours(entry.name):
                m.foreign.append(entry.name)
                continue
            m.bytes += st.st_size
            if _SEGMENT.match(entry.name):
                m.segments.append(entry.name)
            elif _LAYOUT.match(entry.name):
                m.layouts.append(entry.name)
            else:
                m.layout_tmps.append(entry.name)
    for names in (m.segments, m.layouts, m.layout_tmps, m.foreign):
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
        return any(e.is_file(follow_symlinks=False) and _is_ours(e.name) for e in it)


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
            f"{dir_arg}: not a torchcache_c cache (no seg-*.tcs or layout-*.json files in it "
            "or in its subdirectories)")
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


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule] + [fmt(r) for r in rows[:-1]] + [rule, fmt(rows[-1])])


# ---- info ------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    cache = resolve(args.dir)
    modules: List[Dict[str, object]] = []
    for m in cache.modules:
        with _open(m) as store:
            st = store.stats()
        modules.append({"module_key": m.key, "path": str(m.path), "entries": st["records"],
                        "bytes": m.bytes, "segments": len(m.segments),
                        "corrupt": st["corrupt"], "layouts": len(m.layouts)})
    totals = {k: sum(int(m[k]) for m in modules)  # type: ignore[call-overload]
              for k in ("entries", "bytes", "segments", "corrupt", "layouts")}
    warning = many_segments_warning([int(m["segments"]) for m in modules])  # type: ignore
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        print(json.dumps({"root": str(cache.root), "modules": modules, "totals": totals},
                         indent=2))
        return EXIT_OK
    header = ["module key", "entries", "size", "segments", "corrupt", "layouts"]
    rows = [[str(m["module_key"]), str(m["entries"]), _human(int(m["bytes"])),  # type: ignore
             str(m["segments"]), str(m["corrupt"]), str(m["layouts"])] for m in modules]
    rows.append(["total", str(totals["entries"]), _human(totals["bytes"]),
                 str(totals["segments"]), str(totals["corrupt"]), str(totals["layouts"])])
    print(f"{cache.root}: {len(modules)} module key(s)")
    print(_table(rows, header))
    if totals["corrupt"]:
        print("corrupt records are skipped, never served; `verify` lists them")
    return EXIT_OK


# ---- verify ----------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
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


def _remove_module(m: ModuleDir) -> int:
    """Unlinks our files through a descriptor of the directory opened without
    following links, so a directory swapped for a link is never entered."""
    removed = 0
    fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in m.ours:
            try:
                if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=fd)
                    removed += 1
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)
    return removed


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
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"would remove {what}; stdin is not a terminal, so pass --yes "
                           "to confirm")
        if not _confirm(f"Remove {what}? [y/N] "):
            print("nothing removed")
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


# ---- entry point -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchcache_c",
        description="Inspect, verify or remove torchcache_c cache directories. DIR is a "
                    "cache root (one subdirectory per module key) or one module-key "
                    "directory.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="entries, size, segments and corrupt records per module key")
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
