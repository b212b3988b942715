"""``python -m dalle_dist.convert``."""

import sys

from .command import main

if __name__ == "__main__":  # importing the module (the layering test does) converts nothing
    sys.exit(main())
