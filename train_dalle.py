#!/usr/bin/env python
"""Train DALL-E. See `python train_dalle.py --help`; the logic lives in dalle_dist.training.dalle_job."""

from dalle_dist.cli import exit_with
from dalle_dist.training.dalle_job import main

if __name__ == "__main__":
    exit_with(main())
