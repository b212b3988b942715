"""Models: DiscreteVAE, the pretrained VAE adapters, DALLE, CLIP and their building blocks; DALL-E 2's
DiffusionPrior, Decoder, DALLE2 and the Autoencoder a latent decoder diffuses in. No training or
distributed code here."""

from .clip import CLIP
from .dalle import DALLE
from .dalle_config import DALLEConfig
from .pretrained import OpenAIDiscreteVAE, VQGanVAE
from .vae import DiscreteVAE

# DALL-E 2's modules import diffusers (~3 s): loaded on first use, so DALL-E 1's scripts never pay for it
LAZY = {"Autoencoder": ".autoencoder", "DiffusionPrior": ".prior", "Decoder": ".decoder", "DALLE2": ".dalle2"}


def __getattr__(name: str):
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLIP",
    "DALLE",
    "DALLE2",
    "Autoencoder",
    "DALLEConfig",
    "Decoder",
    "DiffusionPrior",
    "DiscreteVAE",
    "OpenAIDiscreteVAE",
    "VQGanVAE",
]
