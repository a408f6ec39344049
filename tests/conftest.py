import sys
from pathlib import Path

# Tests import their helpers as top-level modules (and so do their subprocesses).
sys.path.insert(0, str(Path(__file__).parent))
