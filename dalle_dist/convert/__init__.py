"""Other projects' checkpoints as dalle_dist checkpoints: ``python -m dalle_dist.convert PATH --output DIR``.

One module per foreign format, sharing ``common`` (the report, safe file reading, key-by-key weights):

- ``dalle_pytorch``: DALLE-pytorch 1.6.6's ``vae.pt``, ``dalle.pt`` and DeepSpeed folders
  (docs/coming_from_dalle_pytorch.md).

OpenAI's dVAE needs no conversion: ``--openai_enc_path encoder.pkl --openai_dec_path decoder.pkl`` read the
published pickles directly (``models.pretrained``).
"""

from .command import build_parser, main

__all__ = ["build_parser", "main"]
