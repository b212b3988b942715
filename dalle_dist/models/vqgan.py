"""Taming-Transformers' VQGAN (Esser et al. 2021): encoder, decoder and the two quantizers, written here.

The module and parameter names follow taming-transformers (``encoder.down.0.block.1.norm1.weight``,
``quantize.embedding.weight``, ...), so the ``state_dict`` of one of its Lightning ``.ckpt`` files loads
one-to-one once the loss / discriminator entries (``loss.*``) are dropped. Only what tokenising and
decoding need is here: no losses, no training step, no index remapping. The network is configured like
Taming's by a ``ddconfig`` mapping (``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ...).

Images in and out are in [-1, 1]; ``pretrained.VQGanVAE`` adapts them to the [0, 1] pixels DALLE uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantizers import Quantized
from .vae import check_images

# the ddconfig keys Taming's Encoder / Decoder take (resamp_with_conv is optional, and true in its configs)
DDCONFIG_KEYS = (
    "double_z",
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
)
_OPTIONAL = {"resamp_with_conv": True, "dropout": 0.0, "double_z": False}


def check_ddconfig(ddconfig: Mapping[str, Any]) -> dict[str, Any]:
    """``ddconfig`` as a plain dict of Python values with defaults filled in; unknown or missing keys
    and values the architecture cannot take raise ``ValueError`` naming them."""
    unknown = sorted(set(ddconfig) - set(DDCONFIG_KEYS) - set(_OPTIONAL))
    if unknown:
        known = ", ".join((*DDCONFIG_KEYS, "resamp_with_conv"))
        raise ValueError(f"ddconfig has unknown keys {unknown} (known: {known})")
    missing = [k for k in DDCONFIG_KEYS if k not in ddconfig and k not in _OPTIONAL]
    if missing:
        raise ValueError(f"ddconfig lacks {missing}")
    out = {**_OPTIONAL, **ddconfig}
    # lists, not tuples: the config is recorded as JSON and must compare equal after a round trip
    out["ch_mult"] = [int(m) for m in out["ch_mult"]]
    out["attn_resolutions"] = [int(r) for r in out["attn_resolutions"]]
    for key in ("z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks"):
        out[key] = int(out[key])
    out["dropout"] = float(out["dropout"])
    out["double_z"], out["resamp_with_conv"] = bool(out["double_z"]), bool(out["resamp_with_conv"])
    if not out["ch_mult"] or min(out["ch_mult"]) < 1 or min(out["num_res_blocks"], out["z_channels"]) < 1:
        raise ValueError(
            "ddconfig needs a non-empty ch_mult of positive ints, num_res_blocks and z_channels >= 1"
        )
    if out["ch"] < 1 or any(out["ch"] * m % 32 for m in out["ch_mult"]):
        # every feature map is group-normalised in 32 groups
        raise ValueError(f"ddconfig: ch * each ch_mult must be a multiple of 32, got ch={out['ch']}")
    if out["resolution"] % 2 ** (len(out["ch_mult"]) - 1):
        raise ValueError(
            f"ddconfig: resolution {out['resolution']} does not halve {len(out['ch_mult']) - 1} times"
        )
    return out


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Two norm-swish-conv stages and a skip connection (1x1 ``nin_shortcut`` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with 1x1-conv projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B, 1 head, h * w positions, c]
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1 / sqrt(c), as Taming's
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 conv padded on the right and bottom only (Taming's choice)."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then a 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Level(nn.Module):
    """One resolution: ``block`` (ResnetBlocks), ``attn`` (one per block, or none) and a resampler."""

    def __init__(
        self, blocks: list[ResnetBlock], attn: list[AttnBlock], resample: nn.Module | None, name: str
    ):
        super().__init__()
        self.block, self.attn = nn.ModuleList(blocks), nn.ModuleList(attn)
        self.resample_name = name
        if resample is not None:
            setattr(self, name, resample)  # Taming's names: "downsample" / "upsample"

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


class Middle(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image ``[B, in_channels, R, R]`` -> latents ``[B, z_channels, R / 2**(levels-1), ...]``."""

    def __init__(self, ddconfig: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = check_ddconfig(ddconfig)
        ch, mults, dropout = cfg["ch"], cfg["ch_mult"], cfg["dropout"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, padding=1)
        res, width = cfg["resolution"], ch
        levels = []
        for i, mult in enumerate(mults):
            blocks, attn = [], []
            for _ in range(cfg["num_res_blocks"]):
                blocks.append(ResnetBlock(width, ch * mult, dropout))
                width = ch * mult
                if res in cfg["attn_resolutions"]:
                    attn.append(AttnBlock(width))
            last = i == len(mults) - 1
            levels.append(
                Level(
                    blocks, attn, None if last else Downsample(width, cfg["resamp_with_conv"]), "downsample"
                )
            )
            res = res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = Middle(width, dropout)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, cfg["z_channels"] * (2 if cfg["double_z"] else 1), 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latents ``[B, z_channels, r, r]`` -> image ``[B, out_ch, r * 2**(levels-1), ...]``."""

    def __init__(self, ddconfig: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = check_ddconfig(ddconfig)
        ch, mults, dropout = cfg["ch"], cfg["ch_mult"], cfg["dropout"]
        width = ch * mults[-1]
        res = cfg["resolution"] // 2 ** (len(mults) - 1)
        self.conv_in = nn.Conv2d(cfg["z_channels"], width, 3, padding=1)
        self.mid = Middle(width, dropout)
        levels: list[Level] = []
        for i in reversed(range(len(mults))):
            blocks, attn = [], []
            for _ in range(cfg["num_res_blocks"] + 1):
                blocks.append(ResnetBlock(width, ch * mults[i], dropout))
                width = ch * mults[i]
                if res in cfg["attn_resolutions"]:
                    attn.append(AttnBlock(width))
            levels.insert(
                0, Level(blocks, attn, Upsample(width, cfg["resamp_with_conv"]) if i else None, "upsample")
            )
            res = res * 2 if i else res
        # indexed by resolution level like the encoder's `down` (Taming's layout), run from the last
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, cfg["out_ch"], 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry (``embedding``) of each latent vector."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def indices(self, z: Tensor) -> Tensor:
        """Latents ``[B, D, h, w]`` -> code ids ``[B, h, w]``."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.embedding.weight
        # squared distances summed in Taming's order, so near-ties resolve as they do there
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        return dist.argmin(1).view(b, h, w)

    def lookup(self, ids: Tensor) -> Tensor:
        """Code ids ``[B, h, w]`` -> codebook vectors ``[B, D, h, w]``."""
        return self.embedding(ids).permute(0, 3, 1, 2)

    def forward(self, z: Tensor, beta: float = 0.25) -> Quantized:
        """Training: the nearest codes with a straight-through gradient to ``z``, and VQ-VAE's loss (van den
        Oord et al. 2017): the codebook term plus ``beta`` x the commitment term."""
        ids = self.indices(z)
        codes = self.lookup(ids)
        loss = F.mse_loss(codes, z.detach()) + beta * F.mse_loss(z, codes.detach())
        return Quantized(z + (codes - z).detach(), ids, loss)


class GumbelQuantizer(nn.Module):
    """Code logits from a 1x1 ``proj`` of the latents; codebook ``embed``.

    Taming samples the code with Gumbel noise even in eval mode; here the code is the logits' argmax
    (the distribution's mode), so that tokenising an image is deterministic."""

    def __init__(self, in_channels: int, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def indices(self, z: Tensor) -> Tensor:
        """Latents ``[B, C, h, w]`` -> code ids ``[B, h, w]``."""
        return self.proj(z).argmax(1)

    def lookup(self, ids: Tensor) -> Tensor:
        """Code ids ``[B, h, w]`` -> codebook vectors ``[B, D, h, w]``."""
        return self.embed(ids).permute(0, 3, 1, 2)


class VQModel(nn.Module):
    """Taming's ``VQModel`` without its loss: encoder -> ``quant_conv`` -> quantize -> ``post_quant_conv``
    -> decoder. ``GumbelVQ`` swaps in the Gumbel quantizer."""

    gumbel = False

    def __init__(self, ddconfig: Mapping[str, Any], n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.ddconfig = check_ddconfig(ddconfig)
        self.n_embed, self.embed_dim = int(n_embed), int(embed_dim)
        z = self.ddconfig["z_channels"]
        if self.ddconfig["double_z"]:
            raise ValueError("a VQGAN's ddconfig has double_z: false (its encoder outputs z_channels)")
        if self.gumbel and z != self.embed_dim:
            # Taming's GumbelVQ projects quant_conv's embed_dim outputs with a z_channels-wide proj
            raise ValueError(f"GumbelVQ needs embed_dim == z_channels, got {self.embed_dim} and {z}")
        self.encoder = Encoder(self.ddconfig)
        self.decoder = Decoder(self.ddconfig)
        self.quantize = self._quantizer(z)
        self.quant_conv = nn.Conv2d(z, self.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(self.embed_dim, z, 1)

    def _quantizer(self, z_channels: int) -> nn.Module:
        return VectorQuantizer(self.n_embed, self.embed_dim)

    @property
    def downsample_factor(self) -> int:
        """Pixels per code along each side."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def encode_indices(self, images: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` in [-1, 1] -> code ids ``[B, H / f, W / f]``."""
        return self.quantize.indices(self.quant_conv(self.encoder(images)))

    def decode_indices(self, ids: Tensor) -> Tensor:
        """Code ids ``[B, h, w]`` -> images ``[B, out_ch, h * f, w * f]`` in about [-1, 1] (unclamped)."""
        return self.decoder(self.post_quant_conv(self.quantize.lookup(ids)))

    def forward(self, images: Tensor) -> Tensor:
        """The reconstruction of ``images`` through the codes."""
        return self.decode_indices(self.encode_indices(images))


class GumbelVQ(VQModel):
    """Taming's ``GumbelVQ``: codes from ``quantize.proj`` logits, codebook ``quantize.embed``."""

    gumbel = True

    def _quantizer(self, z_channels: int) -> nn.Module:
        return GumbelQuantizer(z_channels, self.n_embed, self.embed_dim)


class VQGAN(nn.Module):
    """A Taming VQGAN (plain VQ) as a trainable image tokenizer, with DiscreteVAE's interface
    (``get_codebook_indices``, ``decode``, ``norm`` / ``denormalize``, ``codebook``, ``last_layer``), so
    ``train_vae.py --vqgan_model_path`` fine-tunes one and DALL-E reads the result from our own checkpoint.
    Its loss: L1 reconstruction in [-1, 1] (Taming's) plus the quantizer's; the perceptual and adversarial
    terms are train_vae.py's ``--perceptual_weights`` / ``--gan``."""

    quantizer = "vqgan"

    def __init__(self, ddconfig: Mapping[str, Any], n_embed: int, embed_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.model = VQModel(ddconfig, n_embed, embed_dim)
        dd = self.model.ddconfig
        self._config = {
            "ddconfig": dict(dd),
            "n_embed": int(n_embed),
            "embed_dim": int(embed_dim),
            "beta": beta,
        }
        self.beta = beta
        self.image_size, self.channels, self.num_tokens = dd["resolution"], dd["in_channels"], int(n_embed)
        self.num_layers = len(dd["ch_mult"]) - 1
        self.fmap_size = self.image_size // 2**self.num_layers
        self.image_seq_len = self.fmap_size**2

    def config(self) -> dict[str, Any]:
        return {**self._config, "ddconfig": dict(self._config["ddconfig"])}

    @property
    def codebook(self) -> VectorQuantizer:
        return self.model.quantize

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight (the adaptive weight's reference)."""
        return self.model.decoder.conv_out.weight

    def norm(self, images: Tensor) -> Tensor:
        """[0, 1] pixels -> the [-1, 1] the network works in."""
        return images * 2 - 1

    def denormalize(self, images: Tensor) -> Tensor:
        return (images + 1) * 0.5

    def _check(self, images: Tensor) -> None:
        check_images(images, self.channels, self.image_size)

    @torch.no_grad()
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Token ids ``[B, fmap_size**2]`` of images in [0, 1]."""
        self._check(images)
        return self.model.encode_indices(self.norm(images)).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Token ids ``[B, N]`` -> images in [-1, 1] (``denormalize`` maps them to pixels)."""
        return self.model.decode_indices(img_seq.view(img_seq.shape[0], self.fmap_size, self.fmap_size))

    def forward(
        self, img: Tensor, return_loss: bool = False, return_recons: bool = False, temp: float | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Reconstruction (in [-1, 1]), or its loss (``return_loss``; with ``return_recons`` both)."""
        self._check(img)
        x = self.norm(img)
        quantized = self.model.quantize(self.model.quant_conv(self.model.encoder(x)), self.beta)
        out = self.model.decoder(self.model.post_quant_conv(quantized.codes))
        if not return_loss:
            return out
        loss = (x - out).abs().mean() + quantized.loss
        return (loss, out) if return_recons else loss


def build_vqgan(ddconfig: Mapping[str, Any], n_embed: int, embed_dim: int, gumbel: bool = False) -> VQModel:
    """A ``VQModel`` (or ``GumbelVQ``) of the given configuration, randomly initialised."""
    return (GumbelVQ if gumbel else VQModel)(ddconfig, n_embed, embed_dim)


__all__ = ["VQGAN", "GumbelVQ", "VQModel", "build_vqgan", "check_ddconfig"]
