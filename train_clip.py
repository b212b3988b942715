#!/usr/bin/env python
"""Train CLIP. See `python train_clip.py --help`; the logic lives in dalle_dist.training.clip_job."""

from dalle_dist.cli import exit_with
from dalle_dist.training.clip_job import main

if __name__ == "__main__":
    exit_with(main())
