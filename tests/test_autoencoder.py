"""The continuous autoencoder DALL-E 2's latent decoder will diffuse in (issue [3/6], plan B): shapes, the
latent normalisation, the loss falling, rebuilding from its config and weights, bad arguments."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers", reason="diffusers is a dependency of dalle_dist: pip install -e .")

from dalle_dist import Autoencoder

COLOURS = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0)]


def tiny(**kwargs) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(image_size=16, widths=(8, 16, 16), latent_channels=4, norm_groups=4, **kwargs)


def pictures() -> torch.Tensor:
    """Four 16 px pictures: a flat colour with a square of another in one corner."""
    images = torch.stack([torch.tensor(c)[:, None, None].expand(3, 16, 16).clone() for c in COLOURS])
    images[:, :, :6, :6] = 1 - images[:, :, :6, :6]
    return images


def test_shapes_and_the_latent_normalisation():
    ae = tiny().eval()
    images = pictures()
    assert ae.latent_size == 4 and ae.encode(images).shape == (4, 4, 4, 4)
    with torch.no_grad():
        raw = ae.raw_latents(images)
        assert torch.equal(ae.encode(images), raw)  # identity until fitted
        ae.fit_latent_stats(images)
        z = ae.encode(images)
        torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
        assert z.std().item() == pytest.approx(1.0, rel=1e-4)
        torch.testing.assert_close(z * ae.latent_std + ae.latent_mean, raw, atol=1e-5, rtol=1e-5)
        out = ae.decode(z)
        direct = ((ae.vae.decode(raw).sample + 1) / 2).clamp(0, 1)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-5)


def test_the_loss_falls_and_kl_weight_counts():
    ae = tiny()
    images = pictures()
    opt = torch.optim.Adam(ae.parameters(), lr=5e-3)
    losses = []
    for _ in range(100):
        torch.manual_seed(len(losses))
        loss = ae(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.35 * sum(losses[:5]) / 5, losses[::10]
    torch.manual_seed(0)
    with_kl = tiny(kl_weight=1.0)(images)
    torch.manual_seed(0)
    without = tiny(kl_weight=0.0)(images)
    assert with_kl.item() > without.item()  # same weights and draws: the KL term adds


def test_rebuilt_from_its_config_and_weights(tmp_path):
    ae = tiny().eval()
    with torch.no_grad():
        ae.fit_latent_stats(pictures())
    save_file(ae.state_dict(), tmp_path / "model.safetensors")
    again = Autoencoder(**ae.config())
    again.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again.encode(pictures()), ae.encode(pictures()))
        z = torch.randn(2, 4, 4, 4)
        assert torch.equal(again.decode(z), ae.decode(z))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="image_size 18 must be a multiple of 4"):
        Autoencoder(image_size=18, widths=(32, 64, 64))
    with pytest.raises(ValueError, match="norm_groups 8 must divide every width 8, 12"):
        Autoencoder(image_size=16, widths=(8, 12))
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        Autoencoder(kl_weight=-1.0)
    with pytest.raises(ValueError, match=r"takes images \[B, 3, 16, 16\], got \(2, 3, 32, 32\)"):
        tiny().encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="returns the loss"):
        tiny()(pictures(), return_loss=False)


def test_contrast_weighting_counts_each_picture_by_its_own_contrast():
    """recon_weighting="contrast": a picture's squared error over its own pixel variance. The same error
    weighs ~20x more on a low-contrast picture than on a high-contrast one; weights are per picture, so the
    loss of a batch is the mean of its halves' (what makes 2 ranks x b equal 1 x 2b)."""
    from dalle_dist.models.autoencoder import CONTRAST_FLOOR, CONTRAST_REFERENCE, contrast_weighted_mse

    high = pictures()[:1] * 2 - 1  # in [-1, 1]: a square of the opposite colour
    low = high * 0.2  # the same picture at a fifth of the contrast
    noise = torch.randn(1, 3, 16, 16) * 0.05
    for target in (high, low):
        var = target.flatten(1).var(1)
        expected = ((CONTRAST_REFERENCE + CONTRAST_FLOOR) / (var + CONTRAST_FLOOR) * noise.pow(2).mean())[0]
        torch.testing.assert_close(contrast_weighted_mse(target + noise, target), expected)
    ratio = contrast_weighted_mse(low + noise, low) / contrast_weighted_mse(high + noise, high)
    assert 20 < ratio < 26  # variance 25x smaller, softened by the floor
    both = torch.cat([high, low])
    halves = (contrast_weighted_mse(high + noise, high) + contrast_weighted_mse(low + noise, low)) / 2
    torch.testing.assert_close(contrast_weighted_mse(both + noise, both), halves)
    ae, plain = tiny(recon_weighting="contrast"), tiny()
    assert ae.config()["recon_weighting"] == "contrast"
    torch.manual_seed(0)
    weighted = ae(pictures())
    torch.manual_seed(0)
    assert weighted.item() != plain(pictures()).item()  # same weights and draws, another loss
    with pytest.raises(ValueError, match="recon_weighting must be one of none, contrast"):
        Autoencoder(recon_weighting="edges")


def test_blocks_are_the_encoder_and_the_decoder():
    """What --compile compiles and FSDP shards: the encoder and decoder (the latent decoder carries them)."""
    ae = tiny()
    assert ae.blocks() == [ae.vae.encoder, ae.vae.decoder]
