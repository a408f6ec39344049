"""The machine a benchmark ran on, printed the same way by every script here.

Scripts run as ``python benchmarks/<name>.py``, so this directory is on sys.path and
they import it as ``from _machine import cpu_description, load_average``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """The CPU as /proc/cpuinfo names it: model, vendor, family and model numbers,
    cache size, how many CPUs this process sees and which SIMD levels the hash can
    use (the platform's processor name where there is no /proc/cpuinfo)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    flags = set(fields.get("flags", "").split())
    simd = ",".join(f for f in ("avx2", "avx512f", "avx512dq") if f in flags) or "none"
    return (f"{fields.get('model name', platform.machine())} (vendor "
            f"{fields.get('vendor_id', '?')}, family {fields.get('cpu family', '?')}, model "
            f"{fields.get('model', '?')}, cache size {fields.get('cache size', '?')}, "
            f"{os.cpu_count()} CPUs, simd {simd})")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ("?" where the system has none)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"
