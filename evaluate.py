#!/usr/bin/env python
"""Score generated images (CLIP-score, Fréchet distance). See `python evaluate.py --help`; the logic lives in
dalle_dist.evaluation.evaluate."""

from dalle_dist.cli import exit_with
from dalle_dist.evaluation.evaluate import main

if __name__ == "__main__":
    exit_with(main())
