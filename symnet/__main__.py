"""`python -m symnet ...`: the command line (symnet/cli.py)."""
import sys

from .cli import main

sys.exit(main())
