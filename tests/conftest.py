"""Shared small models for the tests."""

import pytest
import torch

from dalle_dist import DALLE, DiscreteVAE


def small_vae(image_size: int = 16, num_layers: int = 2, num_tokens: int = 32) -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(
        image_size=image_size, num_layers=num_layers, num_tokens=num_tokens, codebook_dim=16, hidden_dim=8
    )


def small_dalle(vae: DiscreteVAE | None = None, **overrides) -> DALLE:
    torch.manual_seed(0)
    kwargs = dict(
        dim=32, vae=vae or small_vae(), num_text_tokens=50, text_seq_len=6, depth=2, heads=2, dim_head=16
    )
    kwargs.update(overrides)
    return DALLE(**kwargs)


@pytest.fixture
def vae() -> DiscreteVAE:
    return small_vae()
