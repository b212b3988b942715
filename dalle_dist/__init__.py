"""dalle_dist: train a discrete VAE, DALL-E and DALL-E 2, rank samples with CLIP, on one CPU or many GPUs."""

from . import checkpoint  # noqa: F401  (registers the reader behind DALLE.from_pretrained)
from .models import CLIP, DALLE, DALLEConfig, DiscreteVAE, OpenAIDiscreteVAE, VQGanVAE
from .text import ByteTokenizer


def __getattr__(name: str):
    """DALL-E 2's classes, loaded on first use (``models`` says why)."""
    from . import models

    if name in models.LAZY:
        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = [
    "CLIP",
    "DALLE",
    "DALLE2",
    "Autoencoder",
    "ByteTokenizer",
    "DALLEConfig",
    "Decoder",
    "DiffusionPrior",
    "DiscreteVAE",
    "OpenAIDiscreteVAE",
    "VQGanVAE",
    "__version__",
]
