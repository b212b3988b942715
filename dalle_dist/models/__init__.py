"""Models: DiscreteVAE, the pretrained VAE adapters, DALLE, CLIP and their building blocks. No training or
distributed code here."""

from .clip import CLIP
from .dalle import DALLE
from .dalle_config import DALLEConfig
from .pretrained import OpenAIDiscreteVAE, VQGanVAE
from .vae import DiscreteVAE

__all__ = ["CLIP", "DALLE", "DALLEConfig", "DiscreteVAE", "OpenAIDiscreteVAE", "VQGanVAE"]
