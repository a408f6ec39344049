import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).parent


def run_python(code: str, cwd=None, env=None) -> str:
    """Run `code` in a fresh interpreter (with the test setup) and return its stdout."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import conftest\n"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout

