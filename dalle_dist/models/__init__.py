"""Models: DiscreteVAE, the pretrained VAE adapters, DALLE, CLIP and their building blocks. No training or
distributed code here."""

from .clip import CLIP
from .dalle import DALLE
from .pretrained import OpenAIDiscreteVAE, VQGanVAE
from .vae import DiscreteVAE

__all__ = ["CLIP", "DALLE", "DiscreteVAE", "OpenAIDiscreteVAE", "VQGanVAE"]
