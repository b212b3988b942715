"""dalle_dist: train a discrete VAE and DALL-E, rank samples with CLIP, on one CPU or many GPUs."""

from .models import CLIP, DALLE, DALLEConfig, DiscreteVAE, OpenAIDiscreteVAE, VQGanVAE
from .text import ByteTokenizer

__version__ = "0.1.0"
__all__ = [
    "CLIP",
    "DALLE",
    "ByteTokenizer",
    "DALLEConfig",
    "DiscreteVAE",
    "OpenAIDiscreteVAE",
    "VQGanVAE",
    "__version__",
]
