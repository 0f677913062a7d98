"""Entry point for `python -m compression_core`."""
import sys

from .cli import main

sys.exit(main())
