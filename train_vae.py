#!/usr/bin/env python
"""Train a discrete VAE. See `python train_vae.py --help`; the logic lives in dalle_dist.training.vae_job."""

from dalle_dist.cli import exit_with
from dalle_dist.training.vae_job import main

if __name__ == "__main__":
    exit_with(main())
