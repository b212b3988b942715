"""Pretrained image tokenizers read from local files, frozen: ``VQGanVAE`` and ``OpenAIDiscreteVAE``.

Both take DALLE-pytorch's arguments and expose what ``DALLE`` needs of a VAE: ``image_size``, ``num_tokens``,
``num_layers`` (``fmap_size = image_size / 2**num_layers``), ``get_codebook_indices(images in [0, 1]) ->
[B, fmap_size**2]`` and ``decode(ids) -> images in [0, 1]``. Files are read without unpickling objects:
``torch.load(weights_only=True)`` (tensors and plain data), ``yaml.safe_load`` and safetensors.

``config()`` records the files (absolute paths and sha256) and the parsed architecture, JSON-serialisable,
so that a DALL-E checkpoint can name the VAE it was trained with; ``pretrained_vae_from_config`` rebuilds the
network from it, with the weights read again from the recorded files (checked against their sha256) or
left to a checkpoint that holds them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import UserError, load_failure
from ..files import sha256
from ..safe_load import NotTorchFileError, UnsafeFileError, load_plain
from .openai_dvae import (
    Conv2d,
    Decoder,
    Encoder,
    ResBlock,
    decoder_config,
    encoder_config,
    map_pixels,
    unmap_pixels,
)
from .vqgan import VQGAN, VQModel, build_vqgan, check_ddconfig

TAMING_FILES = (
    "taming-transformers' VQGAN ImageNet f=16 / 1024 codes, the one DALLE-pytorch downloads: its checkpoint "
    "https://heibox.uni-heidelberg.de/f/140747ba53464f49b476/?dl=1 (last.ckpt) and its project config "
    "https://heibox.uni-heidelberg.de/f/6ecf2af6c658432c8298/?dl=1 (model.yaml); other models: "
    "https://github.com/CompVis/taming-transformers#overview-of-pretrained-models (checkpoints/last.ckpt "
    "with configs/*-project.yaml)"
)
OPENAI_FILES = (
    "OpenAI's dVAE weights are https://cdn.openai.com/dall-e/encoder.pkl and "
    "https://cdn.openai.com/dall-e/decoder.pkl, read as they are (or state dicts of them: .pt, .safetensors)"
)
# taming's model classes with VQModel's network (the others differ: EMA codebooks, remapped indices, ...)
_PLAIN_TARGETS = ("VQModel", "VQNoDiscModel")
_GUMBEL_TARGETS = ("GumbelVQ",)


# ------------------------------------------------------------------------------------------ files
def _existing(path: str | Path | None, what: str, where_to_get: str) -> Path:
    if path is None:
        raise UserError(
            f"no {what} given: dalle_dist downloads nothing; pass the local file ({where_to_get})"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist ({where_to_get})")
    return path.resolve()


class _LightningCallbackKey:
    """Stands in for ``pytorch_lightning``'s ``ModelCheckpoint`` class while a checkpoint is read.

    Lightning 1.0-1.1 (taming's checkpoints) store callback states under the callback's class, so the
    class is referenced by name. Allowing that one name to resolve to this inert class (no behaviour,
    state discarded) lets ``weights_only`` loading read those checkpoints; every other object is refused."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __setstate__(self, state: Any) -> None:
        del state


_LIGHTNING_GLOBALS = [(_LightningCallbackKey, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")]


def _torch_load(path: Path, what: str, expected: str, allowed: Sequence[Any] = ()) -> Any:
    """The tensors and plain data in ``path`` (and ``allowed`` classes); anything else is refused in words."""
    try:
        return load_plain(path, allowed)
    except NotTorchFileError as e:
        raise UserError(f"{what} {path} is not a PyTorch file ({e}): expected {expected}") from None
    except UnsafeFileError as e:
        raise UserError(
            f"refused to load {what} {path}: it holds Python objects besides tensors and plain data ({e}), "
            f"and unpickling them could run code from the file; nothing in it was run. Expected {expected}"
        ) from None


def _tensors(value: Any, where: str, expected: str) -> dict[str, Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    ):
        raise UserError(f"{where} is not a state dict (a mapping of names to tensors): expected {expected}")
    return dict(value)


def read_vqgan_weights(path: Path) -> dict[str, Tensor]:
    """The network weights of a taming-transformers Lightning ``.ckpt`` (its ``loss.*`` entries dropped)."""
    expected = "a taming-transformers checkpoint (last.ckpt: a dict with a 'state_dict')"
    data = _torch_load(path, "VQGAN checkpoint", expected, allowed=_LIGHTNING_GLOBALS)
    if not isinstance(data, dict) or "state_dict" not in data:
        found = sorted(map(str, data))[:6] if isinstance(data, dict) else type(data).__name__
        raise UserError(f"VQGAN checkpoint {path} has no 'state_dict' (found {found}): expected {expected}")
    weights = _tensors(data["state_dict"], f"the 'state_dict' of {path}", expected)
    # the perceptual loss and discriminator are trained with the VQGAN but play no part in coding
    return {k: v for k, v in weights.items() if not k.startswith("loss.")}


# The classes OpenAI's pickles name (its ``dall_e`` package), each rebuilt as ours: the same module tree and
# parameter names, so a pickled module's saved state fits our class. torch's modules in between are its own.
# No other global resolves, and nothing of theirs is imported: unpickling runs no code from the file.
_OPENAI_GLOBALS = [
    (Encoder, "dall_e.encoder.Encoder"),
    (ResBlock, "dall_e.encoder.EncoderBlock"),
    (Decoder, "dall_e.decoder.Decoder"),
    (ResBlock, "dall_e.decoder.DecoderBlock"),
    (Conv2d, "dall_e.utils.Conv2d"),
    nn.Sequential,
    nn.ReLU,
    nn.MaxPool2d,
    nn.Upsample,
    nn.Identity,
]
_OPENAI_MODULES = tuple({entry[0] if isinstance(entry, tuple) else entry for entry in _OPENAI_GLOBALS})


def _module_tensors(module: Any, prefix: str, out: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """The parameters and buffers of an unpickled module tree by name, read from the saved state itself
    (no method of the rebuilt modules runs, so no hook a file could list is called)."""
    state = vars(module)
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (state.get(kind) or {}).items():
            if tensor is not None:
                if not isinstance(tensor, Tensor):
                    raise UserError(f"{where}: {prefix}{name} is a {type(tensor).__name__}, not a tensor")
                out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if not isinstance(child, _OPENAI_MODULES):
            raise UserError(
                f"{where}: {prefix}{name} is a {type(child).__name__}, not one of OpenAI's modules"
            )
        _module_tensors(child, f"{prefix}{name}.", out, where)
    return out


def _read_openai_pickle(path: Path, part: str, what: str) -> dict[str, Tensor]:
    """The weights of OpenAI's pickled ``part`` module (``encoder.pkl`` / ``decoder.pkl`` as published)."""
    expected = f"OpenAI's {part}.pkl ({OPENAI_FILES})"
    module = _torch_load(path, what, expected, allowed=_OPENAI_GLOBALS)
    wanted, other = (Encoder, "decoder") if part == "encoder" else (Decoder, "encoder")
    if not isinstance(module, wanted):
        if isinstance(module, Encoder | Decoder):
            raise UserError(f"{what} {path} holds OpenAI's {other}: is this the {other}? Swap the two files")
        raise UserError(f"{what} {path} holds a {type(module).__name__}, not a module: expected {expected}")
    return _module_tensors(module, "", {}, f"{what} {path}")


def read_openai_weights(path: Path, part: str) -> dict[str, Tensor]:
    """The weights of OpenAI's dVAE ``part`` ("encoder" / "decoder"): its published pickled module
    (``.pkl``, read by the restricted unpickler above), or a state dict in a ``.pt`` / ``.safetensors``."""
    expected = f"the {part}'s state dict saved with torch.save or safetensors ({OPENAI_FILES})"
    what = f"OpenAI dVAE {part}"
    if path.suffix == ".pkl":
        return _read_openai_pickle(path, part, what)
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{what} {path} is not a safetensors file ({load_failure(e)})") from None
    return _tensors(_torch_load(path, what, expected), f"{what} {path}", expected)


def _load_into(module: nn.Module, weights: dict[str, Tensor], where: str, fits: str) -> None:
    """Load ``weights`` strictly, or say in words which names and shapes do not fit."""
    expected = module.state_dict()
    problems = []
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} (the model's {tuple(expected[k].shape)})"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if names:
            problems.append(
                f"{label} {len(names)}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
            )
    if problems:
        raise UserError(f"{where}: the weights do not fit {fits} ({'; '.join(problems)})")
    module.load_state_dict(weights)


# ------------------------------------------------------------------------------------------ configs
def read_taming_config(path: Path) -> dict[str, Any]:
    """The architecture in a taming project ``.yaml``: ``{target, embed_dim, n_embed, ddconfig}``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"VQGAN config {path} is not YAML ({load_failure(e)})") from None
    model = data.get("model") if isinstance(data, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict) or not isinstance(model.get("target"), str):
        raise UserError(
            f"VQGAN config {path} has no model.target and model.params: expected a taming-transformers "
            "project config (configs/*-project.yaml)"
        )
    target = model["target"]
    name = target.rsplit(".", 1)[-1]
    if name not in _PLAIN_TARGETS + _GUMBEL_TARGETS:
        raise UserError(
            f"VQGAN config {path}: model.target {target} is not supported; the VQGAN classes are "
            f"{', '.join(_PLAIN_TARGETS + _GUMBEL_TARGETS)}"
        )
    if params.get("remap") is not None:
        raise UserError(f"VQGAN config {path}: model.params.remap (remapped code indices) is not supported")
    try:
        spec = {
            "target": target,
            "embed_dim": int(params["embed_dim"]),
            "n_embed": int(params["n_embed"]),
            "ddconfig": check_ddconfig(params["ddconfig"]),
        }
    except KeyError as e:
        raise UserError(f"VQGAN config {path}: model.params lacks {e}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"VQGAN config {path}: {e}") from None
    return spec


def _is_gumbel(spec: dict[str, Any]) -> bool:
    return spec["target"].rsplit(".", 1)[-1] in _GUMBEL_TARGETS


def trainable_vqgan(vqgan_model_path: str | Path, vqgan_config_path: str | Path) -> VQGAN:
    """A Taming VQGAN's weights in a trainable ``VQGAN`` (fine-tuning: train_vae.py --vqgan_model_path)."""
    model_path = _existing(vqgan_model_path, "vqgan_model_path (VQGAN checkpoint)", TAMING_FILES)
    config_path = _existing(vqgan_config_path, "vqgan_config_path (VQGAN project config)", TAMING_FILES)
    spec = read_taming_config(config_path)
    if _is_gumbel(spec):
        raise UserError(
            f"VQGAN config {config_path} describes a Gumbel VQGAN: fine-tuning one is not supported (plain "
            "VQModel checkpoints are); DALL-E can still use it frozen with train_dalle.py --taming"
        )
    vqgan = VQGAN(spec["ddconfig"], spec["n_embed"], spec["embed_dim"])
    weights = read_vqgan_weights(model_path)
    _load_into(vqgan.model, weights, f"VQGAN checkpoint {model_path}", f"the model in {config_path}")
    return vqgan


# ------------------------------------------------------------------------------------------ adapters
class _PretrainedVAE(nn.Module):
    """What both adapters share: frozen inference, token-grid shapes, the recorded files."""

    image_size: int
    num_tokens: int
    num_layers: int
    channels: int
    _files: dict[str, str]
    _sha256: dict[str, str]

    def _set_shape(self, image_size: int, num_tokens: int, num_layers: int, channels: int) -> None:
        self.image_size, self.num_tokens, self.num_layers = image_size, num_tokens, num_layers
        self.channels = channels
        self.fmap_size = image_size // 2**num_layers
        self.image_seq_len = self.fmap_size**2

    def _record(self, files: dict[str, Path]) -> None:
        self._files = {k: str(v) for k, v in files.items()}
        self._sha256 = {k: sha256(v) for k, v in files.items()}

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _PretrainedVAE:
        """Stays in eval mode: the network is frozen, and ``DALLE.train()`` must not turn on its dropout."""
        del mode
        return super().train(False)

    def denormalize(self, images: Tensor) -> Tensor:
        """The identity: ``decode`` already gives [0, 1] pixels (``DiscreteVAE.denormalize`` maps to them)."""
        return images

    def _check_images(self, images: Tensor) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be [batch, {', '.join(map(str, expected))}], got {tuple(images.shape)}"
            )

    def _grid(self, img_seq: Tensor) -> Tensor:
        """Token ids ``[B, n]`` -> ``[B, side, side]``."""
        if img_seq.dim() != 2:
            raise ValueError(f"expected token ids [batch, n], got shape {tuple(img_seq.shape)}")
        b, n = img_seq.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"expected a square number of image tokens, got {n}")
        return img_seq.long().view(b, side, side)

    def _verify_files(self, where_to_get: str) -> None:
        """The recorded files still exist and hash as recorded."""
        for key, digest in self._sha256.items():
            path = _existing(self._files[key], key, where_to_get)
            now = sha256(path)
            if now != digest:
                raise UserError(
                    f"{path} has changed since it was recorded (sha256 {digest[:12]}..., now {now[:12]}...): "
                    "put the original file back"
                )


def _blank(cls: type[_PretrainedVAE]) -> Any:
    """An instance of ``cls`` whose ``__init__`` (which reads files) did not run."""
    vae = cls.__new__(cls)
    nn.Module.__init__(vae)
    return vae


@contextlib.contextmanager
def _damaged(name: str) -> Iterator[None]:
    """Turn a missing key or an impossible value of a recorded config into a ``UserError``."""
    try:
        yield
    except KeyError as e:
        raise UserError(f"the recorded {name} config lacks {e}: it is damaged") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"the recorded {name} config is damaged: {e}") from None


def _check_class(config: dict[str, Any], name: str) -> None:
    if not isinstance(config, dict) or config.get("class") != name:
        found = config.get("class") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"this VAE config describes {found!r}, not a {name}")


class VQGanVAE(_PretrainedVAE):
    """A taming-transformers VQGAN (plain or Gumbel) as DALLE's frozen image tokenizer.

    ``vqgan_model_path``: its Lightning ``.ckpt``; ``vqgan_config_path``: its project ``.yaml``. The
    network is ``self.model`` (``vqgan.VQModel`` / ``GumbelVQ``); images are mapped to [-1, 1] for it.
    """

    model: VQModel

    def __init__(
        self, vqgan_model_path: str | Path | None = None, vqgan_config_path: str | Path | None = None
    ):
        super().__init__()
        model_path = _existing(vqgan_model_path, "vqgan_model_path (VQGAN checkpoint)", TAMING_FILES)
        config_path = _existing(vqgan_config_path, "vqgan_config_path (VQGAN project config)", TAMING_FILES)
        try:
            self._build(read_taming_config(config_path))
        except ValueError as e:  # a configuration the network cannot take
            raise UserError(f"VQGAN config {config_path}: {e}") from None
        self._record({"vqgan_model_path": model_path, "vqgan_config_path": config_path})
        _load_into(
            self.model,
            read_vqgan_weights(model_path),
            f"VQGAN checkpoint {model_path}",
            f"the model in {config_path}",
        )
        self._freeze()

    def _build(self, spec: dict[str, Any]) -> None:
        self._spec = spec
        self.is_gumbel = _is_gumbel(spec)
        self.model = build_vqgan(spec["ddconfig"], spec["n_embed"], spec["embed_dim"], gumbel=self.is_gumbel)
        dd = spec["ddconfig"]
        self._set_shape(dd["resolution"], spec["n_embed"], len(dd["ch_mult"]) - 1, dd["in_channels"])

    def config(self) -> dict[str, Any]:
        """JSON-serialisable: the files (absolute paths, sha256) and the parsed architecture."""
        return {
            "class": "VQGanVAE",
            **self._files,
            "sha256": dict(self._sha256),
            "model": {**self._spec, "ddconfig": dict(self._spec["ddconfig"])},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], load_weights: bool = False) -> VQGanVAE:
        """Rebuild from ``config()``: with ``load_weights`` from the recorded files (their sha256 checked),
        otherwise the network alone (untrained), for weights a checkpoint holds."""
        _check_class(config, "VQGanVAE")
        vae = _blank(cls)
        with _damaged("VQGanVAE"):
            spec = config["model"]
            vae._build({**spec, "ddconfig": check_ddconfig(spec["ddconfig"])})
            vae._files = {k: config[k] for k in ("vqgan_model_path", "vqgan_config_path")}
            vae._sha256 = {k: config["sha256"][k] for k in vae._files}
        if load_weights:
            vae._verify_files(TAMING_FILES)
            path = Path(vae._files["vqgan_model_path"])
            _load_into(vae.model, read_vqgan_weights(path), f"VQGAN checkpoint {path}", "the recorded model")
        vae._freeze()
        return vae

    @torch.no_grad()
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Token ids ``[B, fmap_size**2]`` of images ``[B, C, H, W]`` in [0, 1]."""
        self._check_images(images)
        return self.model.encode_indices(2 * images - 1).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Token ids ``[B, n]`` -> images ``[B, C, H, W]`` in [0, 1]."""
        out = self.model.decode_indices(self._grid(img_seq))
        return (out.clamp(-1, 1) + 1) * 0.5

    def forward(self, images: Tensor) -> Tensor:
        """The reconstruction of ``images`` (in [0, 1]) through the codes."""
        return self.decode(self.get_codebook_indices(images))


class OpenAIDiscreteVAE(_PretrainedVAE):
    """OpenAI's DALL-E dVAE as DALLE's frozen image tokenizer.

    ``enc_path`` / ``dec_path``: OpenAI's published ``encoder.pkl`` / ``decoder.pkl`` as they are (read by a
    restricted unpickler that rebuilds only our own module classes: nothing from the file runs), or state
    dicts of them (``.pt`` / ``.pth`` from ``torch.save(module.state_dict())``, or ``.safetensors``). The
    architecture (widths, blocks, vocabulary) is read from
    the weights' shapes. The network is fully convolutional: ``image_size`` (256, OpenAI's) only fixes the
    token grid DALLE models.
    """

    enc: Encoder
    dec: Decoder

    def __init__(
        self, enc_path: str | Path | None = None, dec_path: str | Path | None = None, image_size: int = 256
    ):
        super().__init__()
        enc_file = _existing(enc_path, "enc_path (OpenAI dVAE encoder)", OPENAI_FILES)
        dec_file = _existing(dec_path, "dec_path (OpenAI dVAE decoder)", OPENAI_FILES)
        enc_weights = read_openai_weights(enc_file, "encoder")
        dec_weights = read_openai_weights(dec_file, "decoder")
        try:
            enc_cfg, dec_cfg = encoder_config(enc_weights), decoder_config(dec_weights)
        except ValueError as e:
            raise UserError(f"OpenAI dVAE {enc_file} / {dec_file}: {e}") from None
        self._build(enc_cfg, dec_cfg, image_size)
        self._record({"enc_path": enc_file, "dec_path": dec_file})
        _load_into(self.enc, enc_weights, f"OpenAI dVAE encoder {enc_file}", "OpenAI's encoder")
        _load_into(self.dec, dec_weights, f"OpenAI dVAE decoder {dec_file}", "OpenAI's decoder")
        self._freeze()

    def _build(self, enc_cfg: dict[str, Any], dec_cfg: dict[str, Any], image_size: int) -> None:
        if enc_cfg["vocab_size"] != dec_cfg["vocab_size"]:
            raise UserError(
                f"the OpenAI dVAE encoder has {enc_cfg['vocab_size']} codes and the decoder "
                f"{dec_cfg['vocab_size']}: they are not a pair"
            )
        if image_size < 8 or image_size % 8:
            raise ValueError(
                f"image_size must be a positive multiple of 8 (8x downsampling), got {image_size}"
            )
        self.enc, self.dec = Encoder(**enc_cfg), Decoder(**dec_cfg)
        self._set_shape(image_size, enc_cfg["vocab_size"], 3, enc_cfg["input_channels"])

    def config(self) -> dict[str, Any]:
        """JSON-serialisable: the files (absolute paths, sha256), the architecture and ``image_size``."""
        return {
            "class": "OpenAIDiscreteVAE",
            **self._files,
            "sha256": dict(self._sha256),
            "image_size": self.image_size,
            "encoder": self.enc.config(),
            "decoder": self.dec.config(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], load_weights: bool = False) -> OpenAIDiscreteVAE:
        """Rebuild from ``config()``: with ``load_weights`` from the recorded files (their sha256 checked),
        otherwise the network alone (untrained), for weights a checkpoint holds."""
        _check_class(config, "OpenAIDiscreteVAE")
        vae = _blank(cls)
        with _damaged("OpenAIDiscreteVAE"):
            vae._build(dict(config["encoder"]), dict(config["decoder"]), int(config["image_size"]))
            vae._files = {k: config[k] for k in ("enc_path", "dec_path")}
            vae._sha256 = {k: config["sha256"][k] for k in vae._files}
        if load_weights:
            vae._verify_files(OPENAI_FILES)
            for key, part, module in (("enc_path", "encoder", vae.enc), ("dec_path", "decoder", vae.dec)):
                path = Path(vae._files[key])
                weights = read_openai_weights(path, part)
                _load_into(module, weights, f"OpenAI dVAE {part} {path}", f"the recorded {part}")
        vae._freeze()
        return vae

    @torch.no_grad()
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Token ids ``[B, fmap_size**2]`` of images ``[B, C, H, W]`` in [0, 1]."""
        self._check_images(images)
        return self.enc(map_pixels(images)).argmax(1).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Token ids ``[B, n]`` -> images ``[B, C, H, W]`` in [0, 1] (the logit-Laplace means)."""
        stats = self.dec.decode_codes(self._grid(img_seq))
        return unmap_pixels(torch.sigmoid(stats[:, : self.dec.output_channels]))

    def forward(self, images: Tensor) -> Tensor:
        """The reconstruction of ``images`` (in [0, 1]) through the codes."""
        return self.decode(self.get_codebook_indices(images))


PRETRAINED_VAES: dict[str, type[_PretrainedVAE]] = {
    "VQGanVAE": VQGanVAE,
    "OpenAIDiscreteVAE": OpenAIDiscreteVAE,
}


def pretrained_vae_from_config(
    config: dict[str, Any], load_weights: bool = False
) -> VQGanVAE | OpenAIDiscreteVAE:
    """The VAE a ``config()`` describes (its ``"class"`` picks the adapter); see ``from_config``."""
    name = config.get("class") if isinstance(config, dict) else None
    if name not in PRETRAINED_VAES:
        raise UserError(f"unknown pretrained VAE class {name!r} (known: {', '.join(PRETRAINED_VAES)})")
    return PRETRAINED_VAES[name].from_config(config, load_weights=load_weights)


__all__ = [
    "PRETRAINED_VAES",
    "OpenAIDiscreteVAE",
    "VQGanVAE",
    "pretrained_vae_from_config",
    "read_taming_config",
]
