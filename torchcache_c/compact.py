"""`python -m torchcache_c compact DIR`: merge the segments of finished writers.

The merge itself is `torchcache_c._C.compact` (csrc/store.c): it copies the
verified records of every segment whose writer cannot append any more into one
new segment, durably, then removes the merged ones; docs/multiprocess.md,
"Compaction", states what it guarantees to processes using the directory.
"""

from __future__ import annotations

import re
from typing import Dict, List

from ._C import compact as _compact

# The merge's temporary file (csrc/store.c, tc_store_compact): left behind only
# by a compaction that was killed; `clear` removes it.
COMPACT_TMP = re.compile(r"\.seg-.+\.tcs\.compact\.tmp\Z", re.DOTALL)

# `info` suggests compaction above this many segments in one module directory:
# a fresh reader opens about 25,000 segments a second, and a long-lived shared
# directory gains one per writer process.
MANY_SEGMENTS = 1000


def compact_module(path: str, min_idle_s: int) -> Dict[str, object]:
    """Merges one module-key directory; returns tc_store_compact's counts."""
    return _compact(path, min_idle_s=min_idle_s)


def summary(path: str, r: Dict[str, object]) -> str:
    if r["merged"] is None:
        return (f"{path}: nothing to merge ({r['segments']} segment(s), {r['live']} of them "
                "with a writer that may still append)")
    return (f"{path}: merged {r['removed']} segment(s) into {r['merged']} "
            f"({r['records']} records; {r['duplicates']} duplicate and {r['dropped']} "
            f"damaged record(s) left out); kept {r['kept']} segment(s)")


def many_segments_warning(counts: List[int]) -> str:
    """A line for `info` when a module directory holds many segments, else ''."""
    worst = max(counts, default=0)
    if worst <= MANY_SEGMENTS:
        return ""
    return (f"warning: a module directory holds {worst} segments (more than {MANY_SEGMENTS}); "
            "opening it and refreshing after misses cost more with every segment: run "
            "`python -m torchcache_c compact DIR`")
