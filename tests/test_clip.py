"""CLIP: shapes, contrastive loss, padding, and ranking samples from DALLE.generate_images."""

import pytest
import torch
from conftest import small_dalle

from dalle_dist import CLIP


def small_clip(**overrides) -> CLIP:
    torch.manual_seed(0)
    kwargs = dict(
        dim_text=32,
        dim_image=32,
        dim_latent=16,
        num_text_tokens=50,
        text_enc_depth=1,
        text_seq_len=6,
        text_heads=2,
        num_visual_tokens=32,
        visual_enc_depth=1,
        visual_heads=2,
        visual_image_size=16,
        visual_patch_size=4,
        dim_head=16,
    )
    kwargs.update(overrides)
    return CLIP(**kwargs)


def test_scores_and_loss():
    clip = small_clip()
    text = torch.randint(1, 50, (3, 6))
    images = torch.rand(3, 3, 16, 16)
    scores = clip(text, images)
    assert scores.shape == (3,)
    loss = clip(text, images, text_mask=torch.ones_like(text).bool(), return_loss=True)
    loss.backward()
    assert loss.item() > 0 and clip.temperature.grad is not None


def test_similarities_start_at_clips_scale():
    """CLIP's initial logit scale 1/0.07 (DALLE-pytorch's e^1 could not make a batch's softmax sharp)."""
    clip = small_clip()
    text, images = torch.randint(1, 50, (3, 6)), torch.rand(3, 3, 16, 16)
    cosine = (clip.embed_text(text) * clip.embed_image(images)).sum(-1)
    assert torch.allclose(clip(text, images), cosine / 0.07, atol=1e-5)
    assert small_clip(logit_scale_init=2.0)(text, images).div(cosine).allclose(torch.tensor(2.0))
    assert small_clip(logit_scale_init=2.0).config()["logit_scale_init"] == 2.0
    with pytest.raises(ValueError, match="logit_scale_init must be positive"):
        small_clip(logit_scale_init=0.0)


def test_padding_is_ignored():
    clip = small_clip()
    text = torch.tensor([[5, 6, 7, 0, 0, 0]])
    other = text.clone()
    other[0, 4] = 9
    mask = text != 0
    image = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(clip(text, image, text_mask=mask), clip(other, image, text_mask=mask))


def test_contrastive_training_separates_pairs():
    clip = small_clip()
    torch.manual_seed(1)
    text = torch.randint(1, 50, (4, 6))
    images = torch.rand(4, 3, 16, 16)
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    for _ in range(60):
        loss = clip(text, images, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        sim = clip.embed_text(text) @ clip.embed_image(images).t()
    assert torch.equal(sim.argmax(dim=1), torch.arange(4))


def test_generate_images_ranks_with_clip(vae):
    dalle, clip = small_dalle(vae), small_clip()
    text = torch.randint(1, 50, (2, 6))
    images, scores = dalle.generate_images(text, clip=clip)
    assert images.shape == (2, 3, 16, 16) and scores.shape == (2,)
    torch.testing.assert_close(scores, clip(text, images))


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="divisible"):
        small_clip(visual_patch_size=5)
    with pytest.raises(ValueError, match="at most 6"):
        small_clip()(torch.ones(1, 7, dtype=torch.long), torch.rand(1, 3, 16, 16))
