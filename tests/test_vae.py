"""DiscreteVAE: shapes, Gumbel sampling options, losses, config round trip and a short training run."""

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F

from dalle_dist.models.vae import QUANTIZER_OPTIONS, DiscreteVAE

SMALL = dict(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)


def make_vae(**overrides) -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(**{**SMALL, **overrides})


def images(batch: int = 2, size: int = 16, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


def coloured_squares(n: int = 8, size: int = 16) -> torch.Tensor:
    """Black images, each with one solid square of its own colour and position."""
    gen = torch.Generator().manual_seed(2)
    out = torch.zeros(n, 3, size, size)
    for i in range(n):
        side = int(torch.randint(size // 4, size // 2 + 1, (1,), generator=gen))
        y, x = torch.randint(0, size - side + 1, (2,), generator=gen).tolist()
        out[i, :, y : y + side, x : x + side] = torch.rand(3, 1, 1, generator=gen)
    return out


def test_attributes():
    vae = make_vae(image_size=32, num_layers=3)
    assert (vae.image_size, vae.num_tokens, vae.num_layers) == (32, 32, 3)
    assert (vae.channels, vae.codebook_dim) == (3, 16)
    assert vae.fmap_size == 4
    assert vae.image_seq_len == 16
    assert vae.codebook.weight.shape == (32, 16)


@pytest.mark.parametrize("num_resnet_blocks", [0, 2])
def test_forward_shapes(num_resnet_blocks):
    vae = make_vae(num_resnet_blocks=num_resnet_blocks)
    img = images(3)
    assert vae(img).shape == img.shape
    logits = vae(img, return_logits=True)
    assert logits.shape == (3, vae.num_tokens, vae.fmap_size, vae.fmap_size)

    loss = vae(img, return_loss=True)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss, recons = vae(img, return_loss=True, return_recons=True)
    assert recons.shape == img.shape
    # the reconstruction loss is taken in the normalised space, against the returned reconstruction
    assert torch.allclose(loss, F.mse_loss(vae.norm(img), recons))


def test_loss_reaches_every_part():
    vae = make_vae(num_resnet_blocks=1)
    vae(images(), return_loss=True).backward()
    for name in ("encoder", "decoder", "codebook"):
        grads = [p.grad for p in getattr(vae, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_smooth_l1_loss():
    vae = make_vae(smooth_l1_loss=True)
    img = images()
    loss, recons = vae(img, return_loss=True, return_recons=True)
    assert torch.allclose(loss, F.smooth_l1_loss(vae.norm(img), recons))
    assert not torch.allclose(loss, F.mse_loss(vae.norm(img), recons))


def test_codebook_indices_and_decode():
    vae = make_vae()
    img = images(3)
    ids = vae.get_codebook_indices(img)
    assert ids.shape == (3, vae.image_seq_len)
    assert ids.dtype == torch.long
    assert not ids.requires_grad
    assert ids.min() >= 0 and ids.max() < vae.num_tokens
    logits = vae(img, return_logits=True)
    assert torch.equal(ids, logits.argmax(dim=1).flatten(1))

    out = vae.decode(ids)
    assert out.shape == (3, 3, 16, 16)
    # decoding hard ids is the same as feeding one-hot codes through the codebook mix
    one_hot = F.one_hot(ids, vae.num_tokens).float().view(3, 4, 4, -1).permute(0, 3, 1, 2)
    codes = torch.einsum("bnhw,nd->bdhw", one_hot, vae.codebook.weight)
    assert torch.allclose(out, vae.decoder(codes), atol=1e-6)

    with pytest.raises(ValueError, match="square"):
        vae.decode(ids[:, :-1])


def _record_gumbel(monkeypatch) -> list:
    calls = []
    original = F.gumbel_softmax

    def spy(logits, *args, **kwargs):
        out = original(logits, *args, **kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(F, "gumbel_softmax", spy)
    return calls


def test_straight_through_gives_one_hot_codes(monkeypatch):
    calls = _record_gumbel(monkeypatch)
    img = images()
    make_vae(straight_through=True)(img, return_loss=True).backward()
    make_vae(straight_through=False)(img)
    (hard_kwargs, hard), (soft_kwargs, soft) = calls
    assert hard_kwargs["hard"] and not soft_kwargs["hard"]
    assert hard_kwargs["tau"] == soft_kwargs["tau"] == 0.9
    # one-hot over the token dimension, yet still differentiable (straight-through)
    assert torch.equal(hard.sum(dim=1), torch.ones_like(hard.sum(dim=1)))
    assert set(hard.detach().unique().tolist()) == {0.0, 1.0}
    assert hard.requires_grad
    assert soft.max() < 1 and soft.min() > 0


def test_temperature_argument(monkeypatch):
    calls = _record_gumbel(monkeypatch)
    vae = make_vae(temperature=2.0)
    img = images()

    def sample(temp=None):
        torch.manual_seed(5)
        return vae(img, temp=temp)

    default, same, cold = sample(), sample(), sample(temp=0.1)
    assert [kwargs["tau"] for kwargs, _ in calls] == [2.0, 2.0, 0.1]
    assert torch.equal(default, same), "same seed and temperature must give the same sample"
    assert not torch.allclose(default, cold), "the temp argument must change the sample"
    # a colder sample is closer to one-hot
    assert calls[2][1].amax(dim=1).mean() > calls[0][1].amax(dim=1).mean()


def test_kl_term():
    img = images()

    def loss(weight):
        torch.manual_seed(3)
        return make_vae(kl_div_loss_weight=weight)(img, return_loss=True)

    plain, with_kl = loss(0.0), loss(0.5)
    assert torch.isfinite(with_kl)
    assert not torch.allclose(plain, with_kl)

    # the added term is weight x KL(q || uniform), averaged over the code positions
    logits = make_vae()(img, return_logits=True)
    log_q = F.log_softmax(logits, dim=1)
    kl = (log_q.exp() * (log_q + math.log(logits.shape[1]))).sum(dim=1).mean()
    assert kl > 0
    assert torch.allclose(with_kl - plain, 0.5 * kl, atol=1e-6)


def test_normalization():
    vae = make_vae()
    img = images()
    assert torch.allclose(vae.norm(torch.full_like(img, 0.5)), torch.zeros_like(img))
    assert torch.allclose(vae.norm(torch.ones_like(img)), torch.ones_like(img))
    assert torch.allclose(vae.denormalize(vae.norm(img)), img, atol=1e-6)

    raw = make_vae(normalization=None)
    assert torch.equal(raw.norm(img), img) and torch.equal(raw.denormalize(img), img)

    # the default has four entries, so RGBA works; a single channel uses only the first entries
    rgba = make_vae(channels=4)
    x = images(channels=4)
    assert torch.allclose(rgba.norm(x)[:, 3], x[:, 3])
    assert rgba(x).shape == x.shape
    grey = make_vae(channels=1, normalization=((0.25,), (2.0,)))
    x = images(channels=1)
    assert torch.allclose(grey.norm(x), (x - 0.25) / 2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(image_size=24, num_layers=2),  # not a power of 2
        dict(image_size=4, num_layers=3),  # smaller than the downsampling
        dict(image_size=0, num_layers=1),
        dict(image_size=16, num_layers=0),
        dict(channels=4, normalization=((0.5,) * 3, (0.5,) * 3)),  # too few normalisation entries
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        DiscreteVAE(**{**SMALL, **kwargs})


def test_reinmax_is_refused():
    with pytest.raises(NotImplementedError, match="reinmax"):
        DiscreteVAE(**SMALL, reinmax=True)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 1, 16, 16), (3, 16, 16), (2, 3, 16, 8)])
def test_wrong_input_shape_raises(shape):
    vae = make_vae()
    for call in (vae, vae.get_codebook_indices):
        with pytest.raises(ValueError, match=r"\[batch, 3, 16, 16\]"):
            call(torch.rand(shape))


@pytest.mark.parametrize("normalization", [((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), None])
def test_config_round_trip(normalization):
    vae = make_vae(num_resnet_blocks=1, smooth_l1_loss=True, temperature=0.7, normalization=normalization)
    cfg = json.loads(json.dumps(vae.config()))
    # every argument but the other quantizers' options (tests/test_quantizers.py checks theirs)
    others = {key for keys in QUANTIZER_OPTIONS.values() for key in keys} | {"quantizer"}
    assert set(cfg) == set(inspect.signature(DiscreteVAE).parameters) - others, (
        "config must name every argument"
    )
    assert cfg["num_resnet_blocks"] == 1 and cfg["temperature"] == 0.7
    rebuilt = DiscreteVAE(**cfg)
    rebuilt.load_state_dict(vae.state_dict(), strict=True)
    img = images()
    assert torch.equal(rebuilt.get_codebook_indices(img), vae.get_codebook_indices(img))
    assert torch.equal(rebuilt.norm(img), vae.norm(img))
    torch.manual_seed(4)
    expected = vae(img, return_loss=True)
    torch.manual_seed(4)
    assert torch.equal(rebuilt(img, return_loss=True), expected)


def test_training_reduces_reconstruction_loss():
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=64, codebook_dim=32, hidden_dim=32)
    data = coloured_squares()
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = vae(data, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    initial, final = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert final < 0.25 * initial, (initial, final)
    # hard codes (the tokens DALLE trains on) also decode to something close to the inputs
    with torch.no_grad():
        hard = F.mse_loss(vae.decode(vae.get_codebook_indices(data)), vae.norm(data))
    assert hard < 0.25 * initial, (initial, hard.item())
