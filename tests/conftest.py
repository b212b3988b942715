"""Shared small models and tiny script settings for the tests."""

import subprocess
import sys
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]
# the smallest settings the scripts accept: a 16 px VAE with a 4 x 4 token grid, a 2-layer DALL-E
TINY_VAE = "--num_tokens 32 --num_layers 2 --hidden_dim 16 --emb_dim 16 --num_resnet_blocks 0 --batch_size 8 "
TINY_VAE += "--dataset_size 64 --image_size 16"
TINY_DALLE = "--dim 32 --depth 2 --heads 2 --dim_head 16 --text_seq_len 24 --dataset_size 64 "
TINY_DALLE += "--attn_types full,axial_row --bpe_vocab_size 300"


def train_tiny_vae(out: Path, env: dict[str, str] | None = None) -> Path:
    """A two-step train_vae.py run with TINY_VAE in ``out`` (what DALL-E script tests train on)."""
    cmd = [
        sys.executable,
        str(ROOT / "train_vae.py"),
        "--output",
        str(out),
        "--max_steps",
        "2",
        *TINY_VAE.split(),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env, timeout=300)
    return out
