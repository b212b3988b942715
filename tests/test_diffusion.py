"""DALL-E 2's models at tiny sizes (issue [3/6], first step): the noise schedule's closed forms, the
samplers against each other and against a known distribution, classifier-free guidance, the losses falling,
the Python API, and checkpoints that round-trip."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is a dependency of dalle_dist: pip install -e .")

from dalle_dist import CLIP, DALLE2, Autoencoder, ByteTokenizer, Decoder, DiffusionPrior
from dalle_dist.checkpoint import load_decoder, load_prior, save_checkpoint
from dalle_dist.errors import UserError
from dalle_dist.models.diffusion import Diffusion, guided

TOKENIZER = ByteTokenizer()
CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
COLOURS = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0)]


def tiny_clip(dim_latent: int = 16) -> CLIP:
    torch.manual_seed(0)
    return CLIP(dim_text=32, dim_image=32, dim_latent=dim_latent, num_text_tokens=TOKENIZER.vocab_size,
                text_enc_depth=1, text_seq_len=24, text_heads=2, visual_enc_depth=1, visual_heads=2,
                visual_image_size=16, visual_patch_size=4, dim_head=16)  # fmt: skip


def tiny_prior(clip: CLIP) -> DiffusionPrior:
    return DiffusionPrior(clip, dim=32, depth=2, heads=2, timesteps=100)


def tiny_decoder(clip: CLIP) -> Decoder:
    return Decoder(clip, image_size=16, dim=16, dim_mults=(1, 2), cond_dim=32, attention_head_dim=16,
                   num_image_tokens=2, timesteps=100)  # fmt: skip


def tiny_set() -> tuple[torch.Tensor, torch.Tensor]:
    """Four captions and their flat-coloured 16 px images."""
    images = torch.stack([torch.tensor(c)[:, None, None].expand(3, 16, 16) for c in COLOURS])
    return TOKENIZER.tokenize(CAPTIONS, 24), images.clone()


# --------------------------------------------------------------------------------------------- schedule


def test_the_cosine_schedule_and_q_sample_in_closed_form():
    diffusion = Diffusion(1000, prediction="v_prediction")
    abar = diffusion.alphas_cumprod.double()
    assert (abar[1:] < abar[:-1]).all() and 0 < abar[-1] < abar[0] <= 1  # monotone, from ~1 to ~0

    def f(t: float, s: float = 0.008) -> float:  # Nichol & Dhariwal 2021, eq. 17
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 250, 500, 900):
        assert abar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-4)

    x0, noise = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    t = torch.tensor([0, 100, 500, 900, 999])
    a = abar[t][:, None]
    torch.testing.assert_close(diffusion.add_noise(x0, noise, t), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    torch.testing.assert_close(diffusion.target(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)
    assert torch.equal(Diffusion(10, "sample").target(x0, noise, t % 10), x0)
    assert torch.equal(Diffusion(10, "epsilon").target(x0, noise, t % 10), noise)
    with pytest.raises(ValueError, match="prediction must be"):
        Diffusion(10, "x_start")
    with pytest.raises(ValueError, match="sampler must be"):
        diffusion.sampler("euler")


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon", "sample"])
def test_min_snr_weights_each_sample_as_its_x0_error_times_min_snr_gamma(prediction):
    """Hang et al. 2023 in the x_0 form, computed here from the closed forms, whatever the network predicts;
    per sample (a batch's loss is its halves' mean, so 2 ranks x b train as 1 x 2b); 0 is the plain MSE."""
    diffusion = Diffusion(1000, prediction)
    torch.manual_seed(0)
    x0, noise, guess = (torch.randn(6, 3, 4, 4, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 3, 100, 500, 900, 999])
    a = diffusion.alphas_cumprod.double()[t][:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    x0_guess = {
        "v_prediction": a.sqrt() * x_t - (1 - a).sqrt() * guess,
        "epsilon": (x_t - (1 - a).sqrt() * guess) / a.sqrt(),
        "sample": guess,
    }[prediction]
    snr = (a / (1 - a)).flatten()
    x0_error = (x0_guess - x0).pow(2).flatten(1).mean(1)
    for gamma in (1.0, 5.0):
        expected = (snr.clamp(max=gamma) * x0_error).mean().item()
        loss = diffusion.loss(guess, x0, noise, t, gamma)
        assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected, rel=1e-4)
        halves = [diffusion.loss(guess[s], x0[s], noise[s], t[s], gamma) for s in (slice(0, 3), slice(3, 6))]
        assert loss.item() == pytest.approx(sum(halves).item() / 2, rel=1e-6)
    plain = torch.nn.functional.mse_loss(guess.float(), diffusion.target(x0, noise, t).float())
    assert diffusion.loss(guess, x0, noise, t, 0.0).item() == pytest.approx(plain.item(), rel=1e-6)


def gaussian_denoiser(diffusion: Diffusion, mean: float, std: float):
    """The exact E[x_0 | x_t] when x_0 ~ N(mean, std²) per dimension (a "sample" prediction)."""

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = diffusion.alphas_cumprod.to(x.dtype)[t][:, None]
        gain = a.sqrt() * std**2 / (a * std**2 + 1 - a)
        return mean + gain * (x - a.sqrt() * mean)

    return predict


def test_samplers_draw_the_known_distribution_and_ddim_eta_1_matches_ddpm():
    """With the exact denoiser of N(1.5, 0.5²): DDPM's ancestral path over every step and DDIM with η = 1
    over every step give the same mean and spread; DDIM (η = 0) and DPM-Solver++ in 25 steps too."""
    diffusion = Diffusion(200, prediction="sample")
    model = gaussian_denoiser(diffusion, 1.5, 0.5)
    drawn = {}
    for name, sampler, steps, eta in (("ddpm", "ddpm", 200, 0.0), ("ddim_eta1", "ddim", 200, 1.0),
                                      ("ddim", "ddim", 25, 0.0), ("dpm", "dpm", 25, 0.0)):  # fmt: skip
        g = torch.Generator().manual_seed(0)
        x = diffusion.sample(model, (4000, 2), device=torch.device("cpu"), steps=steps, sampler=sampler,
                             eta=eta, generator=g)  # fmt: skip
        drawn[name] = (x.mean().item(), x.std().item())
    for name, (mean, std) in drawn.items():
        assert mean == pytest.approx(1.5, abs=0.03) and std == pytest.approx(0.5, abs=0.03), (name, drawn)
    assert drawn["ddim_eta1"][0] == pytest.approx(drawn["ddpm"][0], abs=0.03)
    assert drawn["ddim_eta1"][1] == pytest.approx(drawn["ddpm"][1], abs=0.03)


def test_guidance_mixes_the_two_predictions_and_scale_1_is_the_conditional_model():
    calls = []

    def model(x, t, keep):
        calls.append(len(x))
        return torch.where(keep[:, None], torch.full_like(x, 3.0), torch.full_like(x, 1.0))

    x, t = torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)
    cond, uncond = {"keep": torch.ones(2, dtype=torch.bool)}, {"keep": torch.zeros(2, dtype=torch.bool)}
    assert torch.equal(guided(model, 2.5)(x, t, cond, uncond), torch.full((2, 4), 1.0 + 2.5 * 2.0))
    assert torch.equal(guided(model, 1.0)(x, t, cond, uncond), torch.full((2, 4), 3.0))
    assert calls == [4, 2]  # guided: one doubled batch; scale 1: the conditional half alone

    prior = tiny_prior(tiny_clip()).eval()
    text, _ = tiny_set()
    with torch.no_grad():
        text_embed = prior.clip.embed_text(text)
    keep = torch.ones(len(text), dtype=torch.bool)
    direct = prior.diffusion.sample(
        lambda x, t: prior.predict(x, t, text, text_embed, keep), (len(text), prior.embed_dim),
        device=torch.device("cpu"), steps=10, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    sampled = prior.sample(text, cond_scale=1.0, steps=10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sampled, torch.nn.functional.normalize(direct, dim=-1))
    guided_2 = prior.sample(text, cond_scale=2.0, steps=10, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(sampled, guided_2)


# ------------------------------------------------------------------------------------------ the models


def mean_loss(model, *args, repeats: int = 6) -> float:
    model.eval()  # no condition dropped: the same draws before and after training
    torch.manual_seed(123)
    with torch.no_grad():
        return sum(float(model(*args)) for _ in range(repeats)) / repeats


@pytest.mark.parametrize("part", ["prior", "decoder"])
def test_the_losses_fall_on_a_tiny_set(part):
    clip = tiny_clip()
    text, images = tiny_set()
    model = tiny_prior(clip) if part == "prior" else tiny_decoder(clip)
    args = (text, images) if part == "prior" else (images, text)
    before = mean_loss(model, *args)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(100):
        optimizer.zero_grad()
        model(*args).backward()
        optimizer.step()
    after = mean_loss(model, *args)
    assert after < 0.6 * before, (before, after)
    assert all(p.grad is None for p in model.clip.parameters()), "the CLIP inside stays frozen"


def test_the_prior_reports_cosine_beside_the_text_baseline():
    prior = tiny_prior(tiny_clip())
    text, images = tiny_set()
    loss, parts = prior(text, images, return_parts=True)
    assert loss.ndim == 0 and set(parts) == {"cosine", "text_cosine"}
    assert all(-1 <= float(v) <= 1 for v in parts.values())


def test_the_python_api_example():
    clip = tiny_clip()
    prior, decoder = tiny_prior(clip), tiny_decoder(clip)
    dalle2 = DALLE2(clip, prior, decoder, tokenizer=TOKENIZER)
    dalle2.val_mode()
    images = dalle2((3, 16, 16), text="a small red circle on a black background", cf_guidance_scale=2.0,
                    steps=8, prior_steps=8)  # fmt: skip
    assert images.shape == (1, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    images = dalle2(text=["a red circle", "a blue square"], cf_guidance_scale=2.0, steps=8, sampler="dpm")
    assert images.shape == (2, 3, 16, 16)
    text, _ = tiny_set()
    embeds = prior.sample(text, steps=8)
    assert embeds.shape == (4, 16) and torch.allclose(embeds.norm(dim=-1), torch.ones(4))
    assert decoder.sample(embeds, text, steps=8).shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match=r"makes images of shape \(3, 16, 16\)"):
        dalle2((3, 32, 32), text="a red circle")
    with pytest.raises(ValueError, match="CLIP embeddings of size 16"):
        DALLE2(tiny_clip(dim_latent=8), prior, decoder)
    with pytest.raises(ValueError, match="need the CLIP's tokenizer"):
        DALLE2(clip, prior, decoder)(text="a red circle")
    with pytest.raises(ValueError, match="power of two"):
        Decoder(clip, image_size=24)
    # widths that are not multiples of 32 (GroupNorm's groups divide every width)
    assert Decoder(clip, image_size=16, dim=24, dim_mults=(1, 2), cond_dim=32, attention_head_dim=8).unet


def test_decoder_attends_at_the_resolutions_it_is_given():
    clip = tiny_clip()

    def attending(**kw):
        unet = Decoder(clip, image_size=32, dim=16, dim_mults=(1, 2, 2, 2), cond_dim=32, **kw).unet
        return [type(b).__name__.startswith("CrossAttn") for b in unet.down_blocks], [
            type(b).__name__.startswith("CrossAttn") for b in unet.up_blocks
        ]

    assert attending() == ([False, False, False, True], [True, False, False, False])  # the lowest: 4 px
    assert attending(attention_resolutions=(8, 16)) == (
        [False, True, True, False],
        [False, True, True, False],
    )
    decoder = Decoder(clip, image_size=32, dim=16, dim_mults=(1, 2, 2, 2), attention_resolutions=(16, 8))
    assert decoder.config()["attention_resolutions"] == [16, 8]  # recorded, so a checkpoint rebuilds it
    with pytest.raises(ValueError, match="among the UNet's resolutions 32, 16, 8, 4"):
        Decoder(clip, image_size=32, dim=16, dim_mults=(1, 2, 2, 2), attention_resolutions=(2,))


def test_decoder_heads_are_attention_head_dim_wide_and_old_checkpoints_keep_their_count(tmp_path):
    """``attention_head_dim`` is each head's width (diffusers' argument of that name counts heads: a
    128-wide block had 32 heads of 4 channels); a checkpoint from before the fix rebuilds its old heads."""
    from diffusers.models.attention_processor import Attention

    clip = tiny_clip()

    def heads(decoder: Decoder) -> set[tuple[int, int]]:  # (heads, query width) of every attention layer
        return {(m.heads, m.to_q.out_features) for m in decoder.unet.modules() if isinstance(m, Attention)}

    kwargs = dict(image_size=16, dim=16, dim_mults=(1, 2), cond_dim=32, timesteps=100)
    assert heads(Decoder(clip, attention_head_dim=8, **kwargs)) == {(4, 32)}  # attends at 8 px: 32 wide
    assert heads(Decoder(clip, attention_head_dim=16, attention_resolutions=(16, 8), **kwargs)) == {
        (1, 16),
        (2, 32),
    }
    with pytest.raises(ValueError, match="attention_head_dim 12 must divide the width 32 at resolution 8"):
        Decoder(clip, attention_head_dim=12, **kwargs)
    old_decoder = Decoder(clip, attention_head_dim=8, head_dim_counts_heads=True, **kwargs)
    assert heads(old_decoder) == {(8, 32)}
    old = {k: v for k, v in old_decoder.config().items() if k != "head_dim_counts_heads"}
    folder = save_checkpoint(
        tmp_path / "old", kind="decoder", meta={"model": old, "clip": clip.config()}, module=old_decoder,
        tokenizer=TOKENIZER,
    )  # fmt: skip
    loaded, _, _ = load_decoder(folder, ema=False)
    assert heads(loaded) == {(8, 32)} and loaded.config()["head_dim_counts_heads"] is True
    text, images = tiny_set()
    seeds = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        assert loaded.eval()(images, text, seeds=seeds) == old_decoder.eval()(images, text, seeds=seeds)


def test_decoder_conditions_by_adagn_on_groups_of_four_channels():
    """The embedding scales and shifts each residual block (its projection is twice the channels) and
    GroupNorm keeps >= 4 channels a group by default, so flat colours survive normalisation."""
    clip = tiny_clip()
    decoder = Decoder(clip, image_size=32, dim=32, dim_mults=(1, 2), cond_dim=32)
    resnet = decoder.unet.down_blocks[0].resnets[0]
    assert resnet.time_emb_proj.out_features == 2 * resnet.conv1.out_channels
    groups = {m.num_groups for m in decoder.unet.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8} and decoder.config()["norm_groups"] == 8  # 32 / 8 = 4 channels a group
    assert Decoder(clip, image_size=32, dim=16, dim_mults=(1, 2), norm_groups=2).config()["norm_groups"] == 2
    with pytest.raises(ValueError, match="norm_groups 3 must divide dim 16"):
        Decoder(clip, image_size=32, dim=16, dim_mults=(1, 2), norm_groups=3)


def test_a_decoder_from_before_adagn_is_told_apart_from_a_damaged_one(tmp_path):
    """A decoder saved before AdaGN (its UNet added the conditioning, no scale): with its meta.json, which
    lacks the norm_groups that came with AdaGN, the error says the checkpoint is old and how to replace it;
    the same weights under a complete meta.json are damaged."""
    from diffusers import UNet2DConditionModel

    clip = tiny_clip()
    old = tiny_decoder(clip)
    old.unet = UNet2DConditionModel.from_config({**old.unet.config, "resnet_time_scale_shift": "default"})
    complete = {"model": old.config(), "clip": clip.config()}
    before = {"model": {k: v for k, v in old.config().items() if k != "norm_groups"}, "clip": clip.config()}
    old_error = "earlier dalle_dist, whose decoder had no norm_groups.*train it again with train_decoder.py"
    for name, meta, error in (("damaged", complete, "damaged or was edited"), ("old", before, old_error)):
        folder = save_checkpoint(tmp_path / name, kind="decoder", meta=meta, module=old, tokenizer=TOKENIZER)
        with pytest.raises(UserError, match=error):
            load_decoder(folder)


def test_the_decoder_trains_with_its_min_snr_gamma_and_old_checkpoints_keep_the_plain_loss(tmp_path):
    """The decoder's loss is ``Diffusion.loss`` at its ``min_snr_gamma`` (5 by default); a checkpoint from
    before the argument existed was trained on the plain loss, and loads (and resumes) with 0."""
    clip = tiny_clip()
    text, images = tiny_set()
    seeds = torch.tensor([11, 12, 13, 14])
    decoder = tiny_decoder(clip).eval()  # no condition dropout: every sample keeps both conditions
    assert decoder.config()["min_snr_gamma"] == 5.0
    x0 = images * 2 - 1
    noise, t, _ = decoder.diffusion.training_draws(x0, 2, seeds)
    keep = torch.ones(4, dtype=torch.bool)
    with torch.no_grad():
        embed = decoder.image_embeddings(images)
        pred = decoder.predict(decoder.diffusion.add_noise(x0, noise, t), t, embed, text, keep, keep)
        for gamma in (5.0, 0.0):
            decoder.min_snr_gamma = gamma
            expected = decoder.diffusion.loss(pred, x0, noise, t, gamma)
            assert decoder(images, text, seeds=seeds).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="min_snr_gamma must be >= 0"):
        Decoder(clip, image_size=16, dim=16, dim_mults=(1, 2), min_snr_gamma=-1.0)
    old = {k: v for k, v in tiny_decoder(clip).config().items() if k != "min_snr_gamma"}
    folder = save_checkpoint(
        tmp_path / "old", kind="decoder", meta={"model": old, "clip": clip.config()}, module=decoder,
        tokenizer=TOKENIZER,
    )  # fmt: skip
    loaded, _, _ = load_decoder(folder)
    assert loaded.min_snr_gamma == 0.0 and loaded.config()["min_snr_gamma"] == 0.0


def test_a_latent_decoder_diffuses_its_autoencoders_latents_and_carries_it(tmp_path):
    """Decoder(clip, autoencoder=ae): the UNet works on the autoencoder's normalised latents (the loss is the
    diffusion loss of ae.encode(images)), samples are ae.decode of what it denoises, the autoencoder stays
    frozen (outside the average of the weights) and its checkpoint rebuilds it, normalisation included."""
    from dalle_dist.training.ema import EMA

    clip = tiny_clip()
    text, images = tiny_set()
    torch.manual_seed(1)
    ae = Autoencoder(image_size=16, widths=(8, 16), latent_channels=4, norm_groups=4).eval()
    with torch.no_grad():
        ae.fit_latent_stats(images)
    decoder = Decoder(clip, autoencoder=ae, dim=16, dim_mults=(1, 2), cond_dim=32, attention_head_dim=16,
                      num_image_tokens=2, timesteps=100).eval()  # fmt: skip
    assert (decoder.image_size, decoder.channels) == (16, 3)
    assert (decoder.unet.config.sample_size, decoder.unet.config.in_channels) == (8, 4)
    seeds = torch.tensor([21, 22, 23, 24])
    with torch.no_grad():
        x0 = ae.encode(images)
        noise, t, _ = decoder.diffusion.training_draws(x0, 2, seeds)
        keep = torch.ones(4, dtype=torch.bool)
        embed = decoder.image_embeddings(images)
        pred = decoder.predict(decoder.diffusion.add_noise(x0, noise, t), t, embed, text, keep, keep)
        expected = decoder.diffusion.loss(pred, x0, noise, t, decoder.min_snr_gamma)
        assert decoder(images, text, seeds=seeds).item() == pytest.approx(expected.item(), rel=1e-5)
        sampled = decoder.sample(embed, text, steps=2, generator=torch.Generator().manual_seed(5))
        latents = decoder.denoise(embed, text, steps=2, generator=torch.Generator().manual_seed(5))
    assert latents.shape == (4, 4, 8, 8) and sampled.shape == (4, 3, 16, 16)
    torch.testing.assert_close(sampled, ae.decode(latents))
    assert not any(p.requires_grad for p in decoder.autoencoder.parameters())
    assert not any(name.startswith("autoencoder.") for name in EMA(decoder, 0.9).names)

    meta = {"model": decoder.config(), "clip": clip.config(), "autoencoder": ae.config()}
    folder = save_checkpoint(
        tmp_path / "latent", kind="decoder", meta=meta, module=decoder, tokenizer=TOKENIZER
    )
    loaded, _, _ = load_decoder(folder)
    assert loaded.autoencoder is not None
    for key, value in decoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.autoencoder.latent_mean, ae.latent_mean)

    kwargs = {"dim": 16, "cond_dim": 32, "attention_head_dim": 16}
    with pytest.raises(ValueError, match="image_size 32 does not match the autoencoder's 16"):
        Decoder(clip, autoencoder=ae, image_size=32, **kwargs)
    with pytest.raises(ValueError, match="latent side 8 is too small for 4 resolutions"):
        Decoder(clip, autoencoder=ae, dim_mults=(1, 2, 2, 2), **kwargs)
    with pytest.raises(
        ValueError, match=r"attention_resolutions \[16\] must be among the UNet's resolutions 8, 4"
    ):
        Decoder(clip, autoencoder=ae, dim_mults=(1, 2), attention_resolutions=(16,), **kwargs)


@pytest.mark.parametrize("part", ["prior", "decoder"])
def test_checkpoints_round_trip_and_refuse_the_other_kind(tmp_path, part):
    clip = tiny_clip()
    model = tiny_prior(clip) if part == "prior" else tiny_decoder(clip)
    meta = {"model": model.config(), "clip": clip.config()}
    folder = save_checkpoint(tmp_path / part, kind=part, meta=meta, module=model, tokenizer=TOKENIZER)
    loaded, tokenizer, _ = (load_prior if part == "prior" else load_decoder)(folder)
    assert type(loaded) is type(model) and tokenizer.vocab_size == TOKENIZER.vocab_size
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    dalle2 = DALLE2(loaded.clip, *((loaded, tiny_decoder(loaded.clip)) if part == "prior" else
                                   (tiny_prior(loaded.clip), loaded)))  # fmt: skip
    assert dalle2(text="a red circle", steps=2, prior_steps=2).shape == (
        1,
        3,
        16,
        16,
    )  # its tokenizer rode along
    other = load_decoder if part == "prior" else load_prior
    with pytest.raises(UserError, match=f"is a {part} checkpoint, but --"):
        other(folder)


def test_blocks_are_the_repeated_units_and_the_frozen_encoders():
    """What --compile compiles and FSDP shards one by one: the prior's layers, the UNet's down / middle /
    up blocks, and the frozen CLIP's branches each runs in its training step; none is listed twice."""
    clip = tiny_clip()
    prior, decoder = tiny_prior(clip), tiny_decoder(clip)
    assert prior.blocks() == [*prior.transformer.layers, *clip.blocks()]
    unet = decoder.unet
    assert decoder.blocks() == [*unet.down_blocks, unet.mid_block, *unet.up_blocks, *clip.blocks()]
    for model in (prior, decoder):
        blocks = model.blocks()
        assert len({id(b) for b in blocks}) == len(blocks)
        inside = {id(m) for m in model.modules()}
        assert all(id(b) in inside for b in blocks)
