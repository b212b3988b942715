#!/usr/bin/env python
"""Generate images from a trained DALL-E. See `python generate.py --help`; logic in dalle_dist.generation."""

import sys

from dalle_dist.generation import main

if __name__ == "__main__":
    sys.exit(main())
