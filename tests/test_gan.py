"""train_vae.py --gan: the PatchGAN discriminator, hinge losses, the adaptive weight, the start step, and
checkpoints (the VAE's as before, the discriminator's in its own file) that resume exactly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_VAE, run_cmd
from safetensors.torch import load_file

from dalle_dist.checkpoint import load_vae
from dalle_dist.models.discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    generator_loss,
    hinge_discriminator_loss,
)
from dalle_dist.models.vae import DiscreteVAE
from dalle_dist.training.vqgan_objective import VQGANObjective

VAE = [sys.executable, str(ROOT / "train_vae.py"), *TINY_VAE.split(), "--quantizer", "vq"]
VAE += ["--log_every", "1", "--save_every_n_steps", "1", "--sample_every", "100"]
GAN = ["--gan", "--disc_layers", "2"]  # 16 px pictures: two halvings


def records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "d_loss" in r]


def test_discriminator_shapes_and_losses():
    d = PatchDiscriminator(3, 8, layers=2)
    assert d.min_image_size() == 12
    assert d(torch.rand(2, 3, 16, 16)).shape == (2, 1, 2, 2)
    assert d(torch.rand(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert generator_loss(fake).item() == 1.0


def test_generator_loss_never_trains_the_discriminator():
    d = PatchDiscriminator(3, 8, layers=2)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    generator_loss(d.frozen(images)).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())
    torch.testing.assert_close(d.frozen(images), d(images))


def test_adaptive_weight_is_the_gradient_ratio_and_finite():
    torch.manual_seed(0)
    vae = DiscreteVAE(
        image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8, quantizer="vq"
    )
    pair = VQGANObjective(vae, PatchDiscriminator(3, 8, 2), start=0, weight=0.5)
    images = torch.rand(4, 3, 16, 16)
    rec, recons = vae(images, return_loss=True, return_recons=True)
    adv = generator_loss(pair.discriminator.frozen(recons))
    last = vae.decoder[-1].weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    weight = adaptive_weight(rec, adv, last)
    assert torch.isfinite(weight) and weight > 0 and not weight.requires_grad
    assert weight.item() == pytest.approx((g_rec.norm() / (g_adv.norm() + 1e-4)).item(), rel=1e-5)
    # a vanishing adversarial gradient: finite through the epsilon, and clamped
    assert adaptive_weight(rec, adv * 0, last).item() == pytest.approx(g_rec.norm().item() / 1e-4, rel=1e-5)
    assert adaptive_weight(rec * 1e6, adv * 0, last).item() == 1e4
    loss, parts = pair(images, step=0)
    assert torch.isfinite(loss) and 0 < parts["gan_weight"].item() < 1e4


def test_the_discriminator_starts_at_its_start_step_and_resume_is_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = [*GAN, "--disc_start", "2"]
    run_cmd([*VAE, "--output", straight, "--max_steps", "5", *flags])
    disc = {
        s: load_file(straight / "checkpoints" / f"step-{s:08d}" / "discriminator.safetensors")
        for s in (1, 2, 3)
    }
    assert all(torch.equal(disc[1][k], disc[2][k]) for k in disc[1]), "no discriminator update before step 2"
    assert any(not torch.equal(disc[2][k], disc[3][k]) for k in disc[2]), "it trains from step 2 on"
    rows = records(straight)
    assert [r["gan_weight"] for r in rows[:2]] == [0.0, 0.0]
    assert all(math.isfinite(r["gan_weight"]) and r["gan_weight"] > 0 for r in rows[2:]), rows
    # the VAE checkpoint is a VAE checkpoint: DALL-E reads it as any other
    vae, ckpt = load_vae(straight)
    assert ckpt.meta["gan"]["start"] == 2 and isinstance(vae, DiscreteVAE)
    run_cmd([*VAE, "--output", split, "--max_steps", "3", *flags])  # the discriminator trained once
    run_cmd([*VAE, "--output", split, "--max_steps", "5", *flags, "--resume"])
    for name in ("model.safetensors", "discriminator.safetensors"):
        a, b = load_file(straight / "final" / name), load_file(split / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    proc = run_cmd(
        [*VAE, "--output", split, "--max_steps", "6", "--resume", "--disc_weight", "0.1"], expect=2
    )
    assert "--disc_weight 0.1 (it has 0.8)" in proc.stderr
    proc = run_cmd([*VAE, "--output", tmp_path / "plain", "--max_steps", "1"])
    proc = run_cmd([*VAE, "--output", tmp_path / "plain", "--max_steps", "2", "--resume", "--gan"], expect=2)
    assert "trained without --gan" in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--disc_start", "5"], "--disc_start configures --gan"),
        (["--disc_start", "5", "--disc_layers", "2"], "--disc_start, --disc_layers configure --gan"),
        (["--gan"], "a 3-layer discriminator needs images of at least 24 px"),
    ],
)
def test_bad_gan_flags(tmp_path, flags, message):
    cmd = [*VAE, "--output", tmp_path / "out", "--max_steps", "1", *flags]
    proc = run_cmd(cmd, expect=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
