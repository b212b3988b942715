"""DALLE with a plain GPT's layout, the options minDALL-E's weights need (issue [4/6]): the caption from
position 0 padded with one token of the vocabulary (no begin token), no rotary embedding or token shift,
learned absolute text and image position embeddings, biases on q / k / v, a GELU feed-forward and separate
text and image heads without biases. Its logits and loss are checked against a plain GPT written here from
those words alone (pre-norm blocks, one causal mask, softmax attention), reading the model's weights by
name."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import small_dalle

from dalle_dist.models.sampling import sample_sequence

PLAIN = dict(
    rotary_emb=False,
    shift_tokens=False,
    qkv_bias=True,
    ff_activation="gelu",
    image_pos_emb="absolute",
    separate_heads=True,
    text_pad_id=1,
)
PAD = PLAIN["text_pad_id"]


def _plain(vae, **overrides):
    return small_dalle(vae, **{**PLAIN, **overrides})


def reference_logits(dalle, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and image logits of internal ids ``[B, n]`` by a plain GPT over the model's named weights."""
    w = dict(dalle.state_dict())
    t, heads, dim_head = dalle.layout.text_len, dalle.hparams.heads, dalle.hparams.dim_head
    n = ids.shape[1]
    text, image = ids[:, :t], ids[:, t:]
    x = torch.cat(
        [
            w["text_emb.weight"][text] + w["text_pos_emb.weight"][: text.shape[1]],
            w["image_emb.weight"][image] + w["image_abs_pos_emb.weight"][: image.shape[1]],
        ],
        dim=1,
    )
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(dalle.hparams.depth):
        a, f = f"transformer.attns.{i}.", f"transformer.ffs.{i}."
        h = F.layer_norm(x, x.shape[-1:], w[a + "norm.weight"], w[a + "norm.bias"])
        q, k, v = F.linear(h, w[a + "fn.to_qkv.weight"], w[a + "fn.to_qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (z.view(*z.shape[:2], heads, dim_head).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim_head)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + F.linear(attn.transpose(1, 2).flatten(2), w[a + "fn.to_out.weight"], w[a + "fn.to_out.bias"])
        h = F.layer_norm(x, x.shape[-1:], w[f + "norm.weight"], w[f + "norm.bias"])
        h = F.gelu(F.linear(h, w[f + "fn.proj_in.weight"], w[f + "fn.proj_in.bias"]))
        x = x + F.linear(h, w[f + "fn.proj_out.weight"], w[f + "fn.proj_out.bias"])
    x = F.layer_norm(x, x.shape[-1:], w["to_logits_norm.weight"], w["to_logits_norm.bias"])
    s = t - 1  # position p predicts token p + 1: the last text position predicts the first image token
    return x[:, :s] @ w["text_head.weight"].T, x[:, s:] @ w["image_head.weight"].T


def test_the_plain_layout_has_a_gpts_weights(vae):
    dalle = _plain(vae)
    names = dict(dalle.named_parameters())
    dim, f = dalle.hparams.dim, dalle.image_fmap_size
    assert names["image_abs_pos_emb.weight"].shape == (f * f, dim)
    assert names["text_head.weight"].shape == (dalle.num_text_tokens, dim)
    assert names["image_head.weight"].shape == (dalle.num_image_tokens, dim)
    assert names["transformer.attns.0.fn.to_qkv.bias"].shape == (3 * dalle.hparams.heads * 16,)
    assert names["transformer.ffs.0.fn.proj_in.weight"].shape == (4 * dim, dim)  # no gate half
    for absent in ("to_logits.weight", "image_row_emb.weight", "text_head.bias"):
        assert absent not in names
    assert dalle.rotary is None and dalle.transformer.token_shift is None


def test_plain_logits_equal_a_plain_gpt(vae):
    dalle = _plain(vae).eval()
    torch.manual_seed(1)
    for p in dalle.parameters():  # biases and norms away from their initial 0 and 1
        p.data.add_(torch.randn_like(p) * 0.05)
    text = torch.randint(2, 50, (2, 6))
    text[0, 4:] = 0  # padding: the pad token at those positions, no begin token before the caption
    image = torch.randint(0, dalle.num_image_tokens, (2, dalle.image_seq_len))
    ids = torch.cat([dalle.text_ids(text), image], dim=1)
    assert ids.shape[1] == dalle.total_seq_len == 6 + dalle.image_seq_len
    assert ids[0, :6].tolist() == [*text[0, :4].tolist(), PAD, PAD] and dalle.num_text_tokens == 50
    with torch.no_grad():
        logits = dalle(text, image)
        loss = dalle(text, image, return_loss=True)
        ref_text, ref_image = reference_logits(dalle, ids[:, : dalle.total_seq_len - 1])
    s = 5
    torch.testing.assert_close(logits[:, :s, : dalle.num_text_tokens], ref_text, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits[:, s:, dalle.num_text_tokens :], ref_image, rtol=1e-4, atol=1e-5)
    ref_loss = (F.cross_entropy(ref_text.flatten(0, 1), ids[:, 1:6].flatten())
                + 7 * F.cross_entropy(ref_image.flatten(0, 1), image.flatten())) / 8  # fmt: skip
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)


def test_plain_layout_trains_and_samples_with_the_cache(vae):
    dalle = _plain(vae, attn_types=("full", "axial_row"))
    text, images = torch.randint(2, 50, (2, 6)), torch.rand(2, 3, 16, 16)
    loss = dalle(text, images, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss) and dalle.image_abs_pos_emb.weight.grad.abs().sum() > 0
    assert dalle.text_head.weight.grad.abs().sum() > 0 and dalle.image_head.weight.grad.abs().sum() > 0
    dalle.eval()
    ids, null = dalle.text_ids(text), dalle.text_ids(torch.zeros_like(text))
    seqs = []
    for use_cache in (True, False):
        torch.manual_seed(3)
        with torch.no_grad():
            seqs.append(
                sample_sequence(dalle, ids, dalle.total_seq_len, filter_thres=4, temperature=1.0,
                                cond_scale=2.0, null_ids=null, use_cache=use_cache)
            )  # fmt: skip
    assert torch.equal(*seqs)  # the key/value cache and the full pass agree under the plain layout
    assert (seqs[0][:, :6] == ids).all() and (seqs[0][:, 6:] < dalle.num_image_tokens).all()


def test_plain_layout_completes_text_and_needs_a_prompt(vae):
    from dalle_dist import ByteTokenizer

    tokenizer = ByteTokenizer()
    dalle = _plain(vae, num_text_tokens=tokenizer.vocab_size, text_pad_id=tokenizer.vocab_size - 1).eval()
    tokens, texts = dalle.generate_texts(tokenizer, text="ab")
    assert tokens.shape == (1, 6) and tokens[0, :2].tolist() == tokenizer.encode("ab")
    assert texts[0].startswith("ab")
    with pytest.raises(ValueError, match="no begin token: give text to complete"):
        dalle.generate_texts(tokenizer)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (dict(ff_activation="relu"), "ff_activation must be one of geglu, gelu"),
        (dict(image_pos_emb="sinusoidal"), "image_pos_emb must be one of axial, absolute"),
        (dict(share_input_output_emb=True), "separate_heads and share_input_output_emb exclude each other"),
        (dict(text_pad_id=50), "text_pad_id 50 is not a token of the vocabulary of 50"),
    ],
)
def test_bad_plain_options_are_named(vae, overrides, words):
    with pytest.raises(ValueError, match=words):
        _plain(vae, **overrides)


def test_mindalles_configuration_has_its_published_parameter_count():
    """minDALL-E 1.3B's stage 2 (docs/pretrained_layouts.md: dim 1536, 42 layers, 24 heads, 64 + 256
    positions, 16 384 text and image tokens) built from our options, on the meta device (no memory):
    1 291 081 728 parameters, the published count to the unit."""
    from torch import nn

    from dalle_dist.models import DALLE

    class Codes(nn.Module):  # what DALLE asks of its VQGAN: 256 px, 16 x 16 codes of 16 384
        image_size, num_tokens, num_layers = 256, 16384, 4

    with torch.device("meta"):
        dalle = DALLE(dim=1536, depth=42, heads=24, dim_head=64, text_seq_len=64, num_text_tokens=16384,
                      vae=Codes(), **{**PLAIN, "text_pad_id": 1})  # fmt: skip
    assert (
        sum(p.numel() for name, p in dalle.named_parameters() if not name.startswith("vae.")) == 1_291_081_728
    )
