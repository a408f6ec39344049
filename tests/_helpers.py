import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn as nn

TESTS = Path(__file__).parent


def run_python(code: str, cwd=None, env=None) -> str:
    """Run `code` in a fresh interpreter (with the test setup) and return its stdout."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import conftest\n"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Counter:
    """Counts forward calls and the batch size of each."""

    def __init__(self):
        self.sizes = []


def frozen_linear(d_in=6, d_out=4, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out).requires_grad_(False)
