"""The README's Python examples, at small sizes, give the shapes the README documents."""

import torch

from dalle_dist import CLIP, DALLE, ByteTokenizer, DiscreteVAE


def test_discrete_vae_example():
    vae = DiscreteVAE(
        image_size=32,
        num_layers=3,
        num_tokens=64,
        codebook_dim=32,
        hidden_dim=16,
        num_resnet_blocks=1,
        temperature=0.9,
        straight_through=False,
    )
    images = torch.rand(4, 3, 32, 32)
    loss = vae(images, return_loss=True)
    loss.backward()
    tokens = vae.get_codebook_indices(images)
    assert tokens.shape == (4, (32 // 2**3) ** 2) and tokens.dtype == torch.long
    assert vae.decode(tokens).shape == (4, 3, 32, 32)


def test_dalle_and_clip_examples():
    vae = DiscreteVAE(
        image_size=32,
        num_layers=3,
        num_tokens=64,
        codebook_dim=32,
        hidden_dim=16,
        num_resnet_blocks=1,
        temperature=0.9,
    )
    dalle = DALLE(
        dim=64,
        vae=vae,
        num_text_tokens=100,
        text_seq_len=8,
        depth=4,
        heads=4,
        dim_head=16,
        attn_dropout=0.1,
        ff_dropout=0.1,
        attn_types=("full", "axial_row", "axial_col", "conv_like"),
    )
    text = torch.randint(0, 100, (4, 8))
    images = torch.rand(4, 3, 32, 32)
    mask = torch.ones_like(text).bool()
    loss = dalle(text, images, mask=mask, return_loss=True)
    loss.backward()

    assert dalle.generate_images(text, mask=mask).shape == (4, 3, 32, 32)
    assert dalle.generate_images(text, cond_scale=3.0).shape == (4, 3, 32, 32)
    assert dalle.generate_images(text, img=images, num_init_img_tokens=8).shape == (4, 3, 32, 32)

    clip = CLIP(
        dim_text=32,
        dim_image=32,
        dim_latent=16,
        num_text_tokens=100,
        text_enc_depth=1,
        text_seq_len=8,
        text_heads=2,
        num_visual_tokens=64,
        visual_enc_depth=1,
        visual_image_size=32,
        visual_patch_size=8,
        visual_heads=2,
    )
    loss = clip(text, images, text_mask=mask, return_loss=True)
    loss.backward()
    images_out, scores = dalle.generate_images(text, mask=mask, clip=clip)
    assert images_out.shape == (4, 3, 32, 32) and scores.shape == (4,)


def test_generate_texts_example():
    tokenizer = ByteTokenizer()
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)
    dalle = DALLE(
        dim=32, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=16, depth=2, heads=2, dim_head=16
    )
    tokens, texts = dalle.generate_texts(tokenizer, text="a red")
    assert tokens.shape == (1, 16) and texts[0].startswith("a red")
