"""LPIPS for train_vae.py --perceptual_weights: read from torchvision / lpips / Taming weight files without
running pickled code, a distance with the properties LPIPS has, and a run that trains with it."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import ROOT, TINY_VAE, run_cmd
from safetensors.torch import load_file, save_file

from dalle_dist.models.perceptual import TAPS, WIDTHS, Perceptual


def write_weights(folder) -> tuple:
    """Random stand-ins for torchvision's vgg16-397923af.pth and LPIPS' vgg.pth, in their key layouts."""
    torch.manual_seed(0)
    reference = Perceptual()
    for p in reference.parameters():
        p.data = torch.randn_like(p) * 0.05
    for lin in reference.lins:
        lin.weight.data = lin.weight.data.abs()  # LPIPS' layers are non-negative
    state = reference.state_dict()
    vgg = {k: v for k, v in state.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # the rest of torchvision's VGG16: ignored
    lins = {f"lin{i}.model.1.weight": state[f"lins.{i}.weight"] for i in range(5)}
    folder.mkdir(exist_ok=True)
    torch.save(vgg, folder / "vgg16-397923af.pth")
    torch.save(lins, folder / "vgg.pth")
    return reference, folder / "vgg16-397923af.pth", folder / "vgg.pth"


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_weights_load_from_each_layout(tmp_path):
    reference, vgg, lins = write_weights(tmp_path)
    model = Perceptual.from_files([vgg, lins])
    assert same(model, reference)
    # lpips' own LPIPS state dict: net.sliceK.N (torchvision's numbers) and lin*, in one safetensors file
    full = {
        f"net.slice1.{k.split('.')[1]}.{k.split('.')[2]}": v
        for k, v in torch.load(vgg).items()
        if k[0] == "f"
    }
    full |= torch.load(lins)
    save_file({k: v.contiguous() for k, v in full.items()}, tmp_path / "lpips.safetensors")
    again = Perceptual.from_files([tmp_path / "lpips.safetensors"])
    assert same(again, reference)


def test_distance_properties(tmp_path):
    model = Perceptual.from_files(write_weights(tmp_path)[1:])
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    d = model(a, b)
    assert d.shape == (3,) and (d > 0).all()
    assert torch.equal(model(a, a), torch.zeros(3))
    torch.testing.assert_close(model(b, a), d)
    assert model(a[:, :1], b[:, :1]).shape == (3,), "grey pictures are read as three equal channels"
    # by hand: unit-normalised features, squared differences weighted per channel, spatial mean, summed
    x, y = (a - model.shift) / model.scale, (b - model.shift) / model.scale
    expected = torch.zeros(3)
    for i, layer in enumerate(model.features[: TAPS[-1] + 1]):
        x, y = layer(x), layer(y)
        if i in TAPS:
            k = TAPS.index(i)
            assert x.shape[1] == WIDTHS[k]
            nx, ny = x / (x.norm(dim=1, keepdim=True) + 1e-10), y / (y.norm(dim=1, keepdim=True) + 1e-10)
            w = model.lins[k].weight.view(1, -1, 1, 1)
            expected += ((nx - ny) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    torch.testing.assert_close(d, expected, rtol=1e-4, atol=1e-6)
    a.requires_grad_(True)
    model(a, b).sum().backward()
    assert a.grad.abs().sum() > 0 and all(p.grad is None and not p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training, "a fixed function: never in training mode"


def test_bad_files_are_one_line(tmp_path):
    _, vgg, lins = write_weights(tmp_path)
    with pytest.raises(ValueError, match=r"lacks \['lins.0.weight'"):
        Perceptual.from_files([vgg])
    with pytest.raises(ValueError, match="does not exist"):
        Perceptual.from_files([tmp_path / "nope.pth", lins])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read .*junk\.pth"):
        Perceptual.from_files([tmp_path / "junk.pth"])

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"features.0.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"cannot read .*evil\.pth"):
        Perceptual.from_files([tmp_path / "evil.pth", lins])
    bad = {k: v[:1] if k == "lin0.model.1.weight" else v for k, v in torch.load(lins).items()}
    bad["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"lins\.0\.weight is .* needs"):
        Perceptual.from_files([vgg, tmp_path / "bad.pth"])


def test_train_vae_with_lpips(tmp_path):
    _, vgg, lins = write_weights(tmp_path / "w")
    out = tmp_path / "vae"
    cmd = [sys.executable, str(ROOT / "train_vae.py"), *TINY_VAE.split(), "--output", out, "--max_steps", "2"]
    cmd += ["--log_every", "1", "--quantizer", "fsq", "--num_tokens", "256"]
    run_cmd([*cmd, "--perceptual_weights", f"{vgg},{lins}", "--perceptual_weight", "0.5"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lpips"] > 0 for r in rows if "loss" in r)
    weights = load_file(out / "final" / "model.safetensors")
    assert weights and not any(k.startswith(("perceptual", "vae.")) for k in weights), "the VAE's own keys"
    proc = run_cmd([*cmd, "--output", tmp_path / "x", "--perceptual_weights", str(vgg)], expect=2)
    assert "lacks ['lins.0.weight'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cmd([*cmd, "--output", tmp_path / "y", "--perceptual_weight", "2"], expect=2)
    assert "--perceptual_weight scales --perceptual_weights" in proc.stderr
