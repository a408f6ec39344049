"""python -m torchcache_c info|verify|clear|prune DIR (see torchcache_c/cli.py)."""

import sys

from .cli import main

sys.exit(main())
