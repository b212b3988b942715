#!/usr/bin/env python
"""Train DALL-E 2's prior. See `python train_prior.py --help`; logic in dalle_dist.training.prior_job."""

from dalle_dist.cli import exit_with
from dalle_dist.training.prior_job import main

if __name__ == "__main__":
    exit_with(main())
