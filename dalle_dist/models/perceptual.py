"""LPIPS (Zhang et al. 2018), the perceptual distance VQGAN trains with: VGG16's features at five depths,
each unit-normalised over channels, their squared differences weighted per channel by a learned 1x1 layer,
averaged over space and summed.

Its weights are two published files this toolkit cannot fetch: torchvision's ImageNet VGG16
(``vgg16-397923af.pth``, keys ``features.N.weight``) and the LPIPS layers (``vgg.pth`` of the lpips package
or Taming-Transformers, keys ``lin0.model.1.weight`` ... ``lin4``); a full lpips ``LPIPS`` state dict
(``net.sliceK.N.weight`` + ``lin*``) works too. ``Perceptual.from_files`` reads them without running pickled
code, from .pth or .safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

# VGG16's convolution widths up to relu5_3 ("M": a 2x2 max-pool), in torchvision's `features` order
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # the ReLU indices LPIPS reads: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
WIDTHS = (64, 128, 256, 512, 512)
# LPIPS's input scaling: [-1, 1] pictures to ImageNet-normalised ones
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, int(v), 3, padding=1), nn.ReLU()]
            width = int(v)
    return nn.Sequential(*layers)


class Perceptual(nn.Module):
    """LPIPS between two batches of pictures in [-1, 1]: ``[B]`` distances (0 for identical pictures).
    Frozen: it is a loss, never trained."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in WIDTHS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Perceptual:
        return super().train(False)  # nothing in it changes with training mode; keep it a fixed function

    def _taps(self, images: Tensor) -> list[Tensor]:
        x = (images - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features[: TAPS[-1] + 1]):
            x = layer(x)
            if i in TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape[1] == 1:  # grey pictures: VGG reads three channels
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        total = torch.zeros(a.shape[0], device=a.device, dtype=torch.float32)
        for lin, fa, fb in zip(self.lins, self._taps(a), self._taps(b), strict=True):
            total = total + lin((fa - fb).pow(2)).float().mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> Perceptual:
        """LPIPS with the weights in ``paths`` (VGG16's and the LPIPS layers', in one file or two).
        ``ValueError`` names a file that cannot be read or a weight missing from all of them."""
        model = cls()
        found: dict[str, Tensor] = {}
        for path in paths:
            found |= _rename(_read(Path(path)))
        expected = model.state_dict()
        missing = sorted(set(expected) - set(found))
        if missing:
            raise ValueError(
                f"--perceptual_weights {','.join(map(str, paths))} lacks {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''} ({len(missing)} of {len(expected)} tensors): give "
                "torchvision's vgg16-397923af.pth and LPIPS' vgg.pth, comma-separated"
            )
        wrong = [k for k in expected if found[k].shape != expected[k].shape]
        if wrong:
            raise ValueError(
                f"--perceptual_weights: {wrong[0]} is {tuple(found[wrong[0]].shape)}, LPIPS-VGG16 needs "
                f"{tuple(expected[wrong[0]].shape)}: these are not VGG16 / LPIPS weights"
            )
        model.load_state_dict({k: found[k].float() for k in expected})
        return model


def _read(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ValueError(f"--perceptual_weights: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the same one-line error
        raise ValueError(
            f"--perceptual_weights: cannot read {path} as weights ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"--perceptual_weights: {path} holds no state dict")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _rename(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's / lpips' / Taming's key names -> this module's."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = (
            key.removeprefix("module.").removeprefix("perceptual_loss.").removeprefix("loss.perceptual_loss.")
        )
        parts = key.split(".")
        if parts[0] == "features" and len(parts) == 3:
            out[key] = value
        elif parts[0] == "net" and parts[1].startswith("slice") and len(parts) == 4:
            # lpips' slices keep torchvision's layer numbers: net.slice2.5.weight is features.5.weight
            out[f"features.{parts[2]}.{parts[3]}"] = value
        elif parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
            out[f"lins.{int(parts[0][3:])}.weight"] = value
    return out
