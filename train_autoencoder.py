#!/usr/bin/env python
"""Train the autoencoder of DALL-E 2's latent decoder. `python train_autoencoder.py --help`; logic in
dalle_dist.training.autoencoder_job."""

from dalle_dist.cli import exit_with
from dalle_dist.training.autoencoder_job import main

if __name__ == "__main__":
    exit_with(main())
