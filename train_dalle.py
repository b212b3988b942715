#!/usr/bin/env python
"""Train DALL-E. See `python train_dalle.py --help`; the logic lives in dalle_dist.training.dalle_job."""

import sys

from dalle_dist.training.dalle_job import main

if __name__ == "__main__":
    sys.exit(main())
