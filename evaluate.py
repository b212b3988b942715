#!/usr/bin/env python
"""Score generated images (CLIP-score, Fréchet distance). See `python evaluate.py --help`; the logic lives in
dalle_dist.evaluation.evaluate."""

from dalle_dist.evaluation.evaluate import main
from dalle_dist.training.job import exit_with

if __name__ == "__main__":
    exit_with(main())
