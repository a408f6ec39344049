"""Print setup.py's SIMD_SOURCES, the one list of which C file needs which
instruction-set flags, as lines `csrc/FILE FLAG...`.

For the scripts that compile csrc/ outside setup.py (fuzz/build.sh,
.ci/aarch64.sh).  Reads setup.py with ast: running it would run setup().
"""

import ast
from pathlib import Path

SETUP = Path(__file__).resolve().parent.parent / "setup.py"


def simd_sources() -> dict:
    for node in ast.parse(SETUP.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "SIMD_SOURCES" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise SystemExit(f"SIMD_SOURCES not found in {SETUP}")


if __name__ == "__main__":
    for name, flags in simd_sources().items():
        print(f"csrc/{name}", *flags)
