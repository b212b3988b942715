#!/usr/bin/env python
"""Train DALL-E. See `python train_dalle.py --help`; the logic lives in dalle_dist.training.dalle_job."""

from dalle_dist.training.dalle_job import main
from dalle_dist.training.job import exit_with

if __name__ == "__main__":
    exit_with(main())
