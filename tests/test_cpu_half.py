"""Attention for bf16 training on the CPU (attention/cpu_half.py): the explicit path is taken exactly when
training under half-precision autocast on the CPU, computes what the fused kernel computes, and DALL-E 2's
prior, decoder and autoencoder train under bf16 autocast with losses and gradients close to fp32's."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is a dependency of dalle_dist: pip install -e .")

from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from test_diffusion import tiny_clip, tiny_decoder, tiny_prior, tiny_set

from dalle_dist import Autoencoder
from dalle_dist.attention.cpu_half import DiffusersAttention, explicit_where_faster, slow_fused_backward


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_the_explicit_path_is_chosen_only_for_half_precision_training_on_the_cpu():
    x = torch.randn(2, 3)
    assert not slow_fused_backward(x)  # fp32, no autocast
    with bf16():
        assert slow_fused_backward(x)
        with torch.no_grad():
            assert not slow_fused_backward(x)  # sampling keeps the fused kernel
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert not slow_fused_backward(x)
    assert slow_fused_backward(x.bfloat16())
    assert not slow_fused_backward(x.double())
    with bf16(), explicit_where_faster(x):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()  # restored
    with explicit_where_faster(x):
        assert torch.backends.cuda.flash_sdp_enabled()


def cross_attention() -> tuple[Attention, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=16, heads=2, dim_head=16)
    x, context = torch.randn(3, 10, 32, requires_grad=True), torch.randn(3, 5, 16)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    # the padding mask as diffusers' UNet hands it to its attention blocks: a bias [B, 1, keys]
    return attn, x, context, ((1 - keep) * -10000.0)[:, None, :]


def softmax_upcasts(attn: Attention) -> list[bool]:
    """Records, call by call, whether ``attn``'s explicit path computes its softmax in fp32."""
    seen, scores = [], attn.get_attention_scores

    def recording(*args, **kwargs):
        seen.append(attn.upcast_softmax)
        return scores(*args, **kwargs)

    attn.get_attention_scores = recording
    return seen


def run(attn, processor, x, context, mask) -> tuple[torch.Tensor, torch.Tensor]:
    attn.set_processor(processor)
    x.grad = None
    out = attn(x, encoder_hidden_states=context, attention_mask=mask)
    out.square().sum().backward()
    return out.detach(), x.grad.clone()


def test_the_diffusers_processor_computes_what_the_fused_kernel_does_and_dispatches():
    """Masked cross-attention: the dispatcher's output and input gradient in fp32 equal the fused
    processor's; under bf16 autocast it runs diffusers' explicit processor (bit for bit) with its softmax
    over these 5 keys in fp32, whose result is the fused one's within bf16 rounding; without gradients it
    runs the fused one."""
    attn, x, context, mask = cross_attention()
    fused = run(attn, AttnProcessor2_0(), x, context, mask)
    ours = run(attn, DiffusersAttention(), x, context, mask)
    explicit = run(attn, AttnProcessor(), x, context, mask)
    for a, b, c in zip(ours, fused, explicit, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-5)
    with bf16():
        upcasts = softmax_upcasts(attn)
        ours = run(attn, DiffusersAttention(), x, context, mask)
        assert upcasts == [True] and attn.upcast_softmax is False  # set for the call only
        attn.upcast_softmax = True
        explicit = run(attn, AttnProcessor(), x, context, mask)
        attn.upcast_softmax = False
        bf16_softmax = run(attn, AttnProcessor(), x, context, mask)
        fused_bf16 = run(attn, AttnProcessor2_0(), x, context, mask)
    for a, b, c in zip(ours, explicit, bf16_softmax, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=0.01 * a.abs().max().item(), rtol=0)  # within bf16 rounding
    for a, b, ref in zip(ours, fused_bf16, fused, strict=True):
        scale = ref.abs().max()
        assert (a.float() - ref).abs().max() < 0.03 * scale
        assert (b.float() - ref).abs().max() < 0.03 * scale
    attn.set_processor(DiffusersAttention())
    with bf16(), torch.no_grad():
        got = attn(x, encoder_hidden_states=context, attention_mask=mask)
        attn.set_processor(AttnProcessor2_0())
        want = attn(x, encoder_hidden_states=context, attention_mask=mask)
    assert torch.equal(got, want)


def test_attention_over_32_keys_or_more_keeps_its_softmax_in_bf16():
    """Self-attention over 36 pixels (6 x 6): at 32 keys and more the bf16 softmax is vectorised, and the
    dispatcher runs diffusers' explicit processor as it is."""
    torch.manual_seed(0)
    attn = Attention(32, heads=2, dim_head=16)
    x = torch.randn(3, 36, 32, requires_grad=True)
    with bf16():
        upcasts = softmax_upcasts(attn)
        ours = run(attn, DiffusersAttention(), x, None, None)
        assert upcasts == [False]
        explicit = run(attn, AttnProcessor(), x, None, None)
    for a, b in zip(ours, explicit, strict=True):
        assert torch.equal(a, b)


def models() -> dict[str, torch.nn.Module]:
    clip = tiny_clip()
    torch.manual_seed(1)
    autoencoder = Autoencoder(image_size=16, widths=(8, 16), latent_channels=4, norm_groups=4)
    return {"prior": tiny_prior(clip), "decoder": tiny_decoder(clip), "autoencoder": autoencoder}


@pytest.mark.parametrize("part", ["prior", "decoder", "autoencoder"])
def test_each_part_trains_under_bf16_autocast_close_to_fp32(part):
    """One loss and its gradients, same seeds, fp32 and bf16 autocast: the loss within 3 %, the gradient
    pointing the same way (cosine > 0.99); the weights stay fp32."""
    model = models()[part].train()
    text, images = tiny_set()
    if part == "decoder":
        assert all(isinstance(p, DiffusersAttention) for p in model.unet.attn_processors.values())
    if part == "autoencoder":
        assert all(isinstance(p, DiffusersAttention) for p in model.vae.attn_processors.values())
    seeds = torch.arange(4)

    def loss_and_grad() -> tuple[float, torch.Tensor]:
        model.zero_grad()
        args = (images,) if part == "autoencoder" else (text, images) if part == "prior" else (images, text)
        loss = model(*args, seeds=seeds)
        loss.backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        return loss.item(), torch.cat(grads)

    loss32, grad32 = loss_and_grad()
    with bf16():
        loss16, grad16 = loss_and_grad()
    assert loss16 == pytest.approx(loss32, rel=0.03)
    assert torch.nn.functional.cosine_similarity(grad16.float(), grad32, dim=0) > 0.99
    assert all(p.dtype == torch.float32 for p in model.parameters())
