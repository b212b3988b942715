"""DALLE-pytorch 1.6.6 checkpoints (its vae.pt, dalle.pt and DeepSpeed folders) as dalle_dist checkpoints.

    python -m dalle_dist.convert vae.pt --output runs/vae-converted
    python -m dalle_dist.convert dalle.pt --output runs/dalle-converted --bpe_path bpe.model
    python -m dalle_dist.convert dalle-ds-cp --output runs/dalle-converted --bpe_path tokenizer.json --hug

What DALLE-pytorch's scripts write, and what is read here:

- ``vae.pt`` (train_vae.py): ``{"hparams": DiscreteVAE keywords, "weights": state dict}``.
- ``dalle.pt`` (train_dalle.py): ``{"hparams": DALLE keywords, "vae_params": DiscreteVAE keywords (None with
  the OpenAI or VQGAN VAE), "weights": state dict (the VAE's under ``vae.``), "epoch", "version",
  "vae_class_name", "opt_state", "scheduler_state"}``.
- a DeepSpeed folder (``dalle-ds-cp/``, ``vae-ds-cp/``): the engine's ``save_checkpoint`` with the same
  dictionary as client state: ``latest`` names a tag folder (``global_stepN/``) whose
  ``mp_rank_00_model_states.pt`` holds the model's state dict as ``module`` beside the client keys, and
  ``zero_pp_rank_*_optim_states.pt`` the optimizer's partitions (not read); a DALL-E folder also has
  ``auxiliary.pt`` (the client keys, and a string in place of the weights).

Every file is read with ``torch.load(weights_only=True)``: tensors and plain containers only (DeepSpeed's
files also name a few of its classes, allowed by ``distributed.deepspeed.safe_loading``), so a crafted
file is refused before anything in it can run. Which options map, which are refused and why:
docs/coming_from_dalle_pytorch.md; the module-structure mapping is in ``_vae_modules`` and
``DalleMapping``. Training state (optimizer, scheduler, epoch) is not converted.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import describe_vae, save_checkpoint
from ..cli import tokenizer_from_flags
from ..download import VQGAN_CONFIG, fetch
from ..errors import UserError
from ..files import sha256
from ..models import DALLE, DiscreteVAE
from ..models.pretrained import VQGanVAE, read_taming_config
from ..text import HuggingFaceTokenizer, Tokenizer, YttmTokenizer
from .common import Report, Weights, load_file, put, refuse, state_dict

SOURCE = "DALLE-pytorch 1.6.6"
DS_MODEL_FILE = "mp_rank_00_model_states.pt"
DS_AUX_FILE = "auxiliary.pt"  # train_dalle.py's DEEPSPEED_CP_AUX_FILENAME
# what DALLE-pytorch's train_dalle.py used when given neither --bpe_path nor --chinese
OPENAI_BPE_VOCAB = 49408

# every keyword of DALLE-pytorch 1.6.6's DiscreteVAE and DALLE, with its default there: options missing from
# a checkpoint's hparams take these values (theirs, which are not always ours)
THEIR_VAE_DEFAULTS: dict[str, Any] = {
    "image_size": 256,
    "num_tokens": 512,
    "codebook_dim": 512,
    "num_layers": 3,
    "num_resnet_blocks": 0,
    "hidden_dim": 64,
    "channels": 3,
    "smooth_l1_loss": False,
    "temperature": 0.9,
    "straight_through": False,
    "reinmax": False,
    "kl_div_loss_weight": 0.0,
    "normalization": ((0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 1)),
}
REQUIRED = object()  # DALLE's dim and depth have no default
THEIR_DALLE_DEFAULTS: dict[str, Any] = {
    "dim": REQUIRED,
    "depth": REQUIRED,
    "num_text_tokens": 10000,
    "text_seq_len": 256,
    "heads": 8,
    "dim_head": 64,
    "reversible": False,
    "attn_dropout": 0.0,
    "ff_dropout": 0,
    "sparse_attn": False,
    "attn_types": None,
    "loss_img_weight": 7,
    "stable": False,
    "sandwich_norm": False,
    "shift_tokens": True,
    "rotary_emb": True,
    "shared_attn_ids": None,
    "shared_ff_ids": None,
    "share_input_output_emb": False,
    "optimize_for_inference": False,
}
# options that have the same name, meaning and weights in both: copied as they are
SAME_DALLE_OPTIONS = (
    "dim",
    "depth",
    "num_text_tokens",
    "text_seq_len",
    "heads",
    "dim_head",
    "reversible",
    "attn_dropout",
    "ff_dropout",
    "loss_img_weight",
    "sandwich_norm",
    "shift_tokens",
    "share_input_output_emb",
    "optimize_for_inference",
)
MAPPED_ATTN_TYPES = ("full", "axial_row", "axial_col")
# the logit of our padding id 0 where DALLE-pytorch had none (see DalleMapping.text_rows): far below any real
# logit, so its probability is exactly 0 in fp32 / bf16 / fp16 softmax, and representable in all three
SUPPRESSED_LOGIT = -1e4


EXPECTED = "the vae.pt or dalle.pt DALLE-pytorch wrote, or its DeepSpeed folder"


def _load(file: Path) -> Any:
    return load_file(file, EXPECTED, "DALLE-pytorch")


def _show(value: Any) -> str:
    return "(required)" if value is REQUIRED else repr(value)


# ----------------------------------------------------------------------------------------- reading files
class Source:
    """A DALLE-pytorch checkpoint as read: kind, hparams, VAE hparams, weights and where they came from."""

    def __init__(self, path: Path, data: dict[str, Any], weights: Any, where: str, notes: list[str]) -> None:
        self.path, self.data, self.notes = path, data, notes
        self.kind = "dalle" if "vae_params" in data else "vae"
        self.hparams = data["hparams"]
        self.vae_params = data.get("vae_params")
        self.where = where
        self.weights = state_dict(weights, f"{where} weights")

    def describe(self) -> str:
        extra = [f"version {self.data['version']}"] if isinstance(self.data.get("version"), str) else []
        if isinstance(self.data.get("epoch"), int):
            extra.append(f"epoch {self.data['epoch']}")
        return f"{self.where}" + (f" ({', '.join(extra)})" if extra else "")


def _check_checkpoint_dict(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or "hparams" not in data:
        keys = sorted(map(str, data))[:6] if isinstance(data, dict) else type(data).__name__
        raise UserError(
            f"{where} is not a DALLE-pytorch checkpoint: it has no 'hparams' (found {keys}); "
            "pass the vae.pt or dalle.pt its train_vae.py / train_dalle.py wrote, or their DeepSpeed folder"
        )
    return data


def read_source(path: Path, tag: str | None = None) -> Source:
    """The checkpoint at ``path``: a ``.pt`` file or a DeepSpeed checkpoint folder."""
    if not path.exists():
        raise UserError(f"{path} does not exist: pass the vae.pt, dalle.pt or DeepSpeed folder to convert")
    if path.is_dir():
        return _read_deepspeed(path, tag)
    if tag is not None:
        raise UserError(f"--tag {tag} names a folder of a DeepSpeed checkpoint, but {path} is a file")
    if path.name.startswith("mp_rank_") and path.name.endswith("_model_states.pt"):
        return _read_deepspeed(path.parent, None)
    data = _check_checkpoint_dict(_load(path), str(path))
    weights = data.get("weights")
    if isinstance(weights, str):  # DeepSpeed's auxiliary.pt: "To get a working standard checkpoint, ..."
        raise UserError(
            f"{path} holds no weights (it is the auxiliary file of a DeepSpeed checkpoint): pass its "
            f"folder {path.parent} instead"
        )
    if weights is None:
        raise UserError(f"{path} has hparams but no 'weights': it is not a complete DALLE-pytorch checkpoint")
    return Source(path, data, weights, str(path), [])


def _deepspeed_tag(folder: Path, tag: str | None) -> Path:
    if tag is not None:
        chosen = folder / tag
        if not (chosen / DS_MODEL_FILE).is_file():
            raise UserError(f"--tag {tag}: {chosen} holds no {DS_MODEL_FILE}")
        return chosen
    if (folder / DS_MODEL_FILE).is_file():
        return folder  # the tag folder itself
    latest = folder / "latest"
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        if not (folder / name / DS_MODEL_FILE).is_file():
            raise UserError(f"{latest} names {name}, but {folder / name} holds no {DS_MODEL_FILE}")
        return folder / name
    tags = sorted(p.parent.name for p in folder.glob(f"*/{DS_MODEL_FILE}"))
    if len(tags) == 1:
        return folder / tags[0]
    if tags:
        raise UserError(
            f"{folder} holds several DeepSpeed checkpoints ({', '.join(tags)}): choose one with --tag"
        )
    if (folder / "meta.json").is_file():
        raise UserError(f"{folder} is already a dalle_dist checkpoint: nothing to convert")
    raise UserError(
        f"{folder} is neither a DeepSpeed checkpoint folder (no 'latest', no */{DS_MODEL_FILE}) nor a file: "
        "pass the vae.pt or dalle.pt DALLE-pytorch wrote, or its DeepSpeed folder (e.g. dalle-ds-cp)"
    )


def _read_deepspeed(folder: Path, tag: str | None) -> Source:
    from ..distributed.deepspeed import safe_loading  # DeepSpeed itself is imported there, if installed

    tag_folder = _deepspeed_tag(folder, tag)
    ranks = sorted(p.name for p in tag_folder.glob("mp_rank_*_model_states.pt"))
    if ranks != [DS_MODEL_FILE]:
        raise UserError(
            f"{tag_folder} holds model-parallel parts ({', '.join(ranks)}): DALLE-pytorch never splits its "
            "models, so this is not one of its checkpoints"
        )
    file = tag_folder / DS_MODEL_FILE
    with safe_loading():
        states = _load(file)
        if not isinstance(states, dict) or "module" not in states:
            raise UserError(f"{file} is not a DeepSpeed model-states file (no 'module' state dict)")
        data = {k: v for k, v in states.items() if k != "module"}
        aux = tag_folder.parent / DS_AUX_FILE  # beside the tag folders
        if "hparams" not in data and aux.is_file():  # the client state is in both; take it from either
            aux_data = _load(aux)
            if isinstance(aux_data, dict):
                data.update({k: v for k, v in aux_data.items() if k != "weights"})
    _check_checkpoint_dict(data, f"{file} (the DeepSpeed client state)")
    where = f"{file}"
    config = states.get("ds_config") if isinstance(states.get("ds_config"), dict) else {}
    zero = config.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
    module = state_dict(states["module"], f"{file} 'module'")
    if stage == 3 or any(t.numel() == 0 for t in module.values()):
        raise UserError(
            f"{file} was written under ZeRO stage 3: its 'module' holds empty placeholders and the weights "
            f"are partitioned across the optimizer files; consolidate them with DeepSpeed's zero_to_fp32.py "
            f"(in {folder}) and convert a checkpoint made from that state dict"
        )
    notes = [
        f"DeepSpeed checkpoint {tag_folder.name} (ZeRO stage {stage}): weights from its 'module' state dict"
    ]
    return Source(folder, data, module, where, notes)


# ----------------------------------------------------------------------------------------- the VAE
def _vae_modules(num_layers: int, num_resnet_blocks: int) -> dict[str, str]:
    """Our DiscreteVAE module path -> DALLE-pytorch's, for every module with weights.

    Theirs nests each down/up-sampling convolution with its ReLU in a Sequential (``encoder.{i}.0``); ours
    keeps one flat Sequential (``encoder.{2i}``). Decoder: theirs is [1x1 conv, res blocks] (with res
    blocks) then the nested transposed convolutions then the output conv; ours the same, flat."""
    layers, blocks = num_layers, num_resnet_blocks
    table = {"codebook": "codebook"}
    for i in range(layers):
        table[f"encoder.{2 * i}"] = f"encoder.{i}.0"
    for r in range(blocks):
        for j in (0, 2, 4):
            table[f"encoder.{2 * layers + r}.net.{j}"] = f"encoder.{layers + r}.net.{j}"
    table[f"encoder.{2 * layers + blocks}"] = f"encoder.{layers + blocks}"
    start = 0
    if blocks:
        table["decoder.0"] = "decoder.0"
        for r in range(blocks):
            for j in (0, 2, 4):
                table[f"decoder.{1 + r}.net.{j}"] = f"decoder.{1 + r}.net.{j}"
        start = 1 + blocks
    for i in range(layers):
        table[f"decoder.{start + 2 * i}"] = f"decoder.{start + i}.0"
    table[f"decoder.{start + 2 * layers}"] = f"decoder.{start + layers}"
    return table


def _their_options(hparams: Any, defaults: dict[str, Any], cls: str, where: str) -> dict[str, Any]:
    """``hparams`` over ``defaults``, refusing anything but a dict of options ``cls`` of that version has."""
    if not isinstance(hparams, dict):
        raise UserError(f"{where} is {type(hparams).__name__}, expected {cls} keyword arguments")
    unknown = sorted(set(map(str, hparams)) - set(defaults))
    if unknown:
        raise UserError(
            f"{where}: {unknown[0]}={hparams[unknown[0]]!r} is not an option of {SOURCE}'s {cls}: the "
            "checkpoint was not written by that version"
        )
    return {**defaults, **hparams}


def vae_kwargs(hparams: Any, where: str, report: Report) -> dict[str, Any]:
    """Our DiscreteVAE keywords for DALLE-pytorch DiscreteVAE ``hparams``; every one of its options maps."""
    kwargs = _their_options(hparams, THEIR_VAE_DEFAULTS, "DiscreteVAE", where)
    for name, value in kwargs.items():
        default = "" if name in hparams else " (their default)"
        if name == "normalization" and value is not None:
            kwargs[name] = tuple(tuple(float(x) for x in v) for v in value)
        if name == "reinmax" and value:
            kwargs[name] = False
            report.item(
                "reinmax=True -> False: ReinMax only changes the gradient of straight-through codes in VAE "
                "training; encoding and decoding are unchanged (further VAE training here uses plain "
                "straight-through)"
            )
            continue
        report.item(f"{name}={value!r}{default}")
    return kwargs


def build_vae(kwargs: dict[str, Any], where: str) -> DiscreteVAE:
    try:
        return DiscreteVAE(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: these options do not make a DiscreteVAE: {e}") from None


def _vae_weights(
    src: Weights, vae: DiscreteVAE, kwargs: dict[str, Any], ours_prefix: str = "", theirs_prefix: str = ""
) -> dict[str, Tensor]:
    table = _vae_modules(kwargs["num_layers"], kwargs["num_resnet_blocks"])
    target = vae.state_dict()
    out: dict[str, Tensor] = {}
    for key in target:
        module, _, param = key.rpartition(".")
        theirs = f"{theirs_prefix}{table[module]}.{param}"
        put(out, target, key, src.take(theirs), theirs)
    return {ours_prefix + k: v for k, v in out.items()}


# ----------------------------------------------------------------------------------------- the DALL-E
def _layer_groups(ids: Any, depth: int, option: str, where: str) -> dict[str, list[int]]:
    """Our ModuleDict key -> the layers that share that branch (ids cycled to ``depth`` as both do)."""
    if ids is None:
        return {str(i): [i] for i in range(depth)}
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple)) or not ids:
        raise refuse(
            where, option, ids, "expected a non-empty sequence of layer ids, as train_dalle.py writes"
        )
    if len({str(i) for i in ids}) != len(set(ids)):
        raise refuse(
            where, option, ids, "two different ids print alike (e.g. 0 and '0'); dalle_dist keys by text"
        )
    groups: dict[str, list[int]] = {}
    for layer in range(depth):
        groups.setdefault(str(ids[layer % len(ids)]), []).append(layer)
    return groups


class DalleMapping:
    """Their DALLE state dict -> ours, for one hparams set.

    Per layer DALLE-pytorch runs ``x + LayerScale(PreNorm(fn))`` where ``fn`` is wrapped for its inference
    cache (``CachedAs`` / ``NonCached``) and, with shift_tokens, in ``PreShiftToken`` plus another
    ``CachedAs``: every wrapper adds a ``.fn`` to the weight names. Ours is ``x + Branch`` (norm, fn,
    post-norm). LayerScale multiplies the branch output by a learned per-channel vector ``scale``; it is
    folded into the last affine map of the branch (the same function; outputs agree to float rounding): the
    output projection (``to_out`` / the second feed-forward layer), or with sandwich_norm the output
    LayerNorm's weight and bias.
    """

    def __init__(self, kwargs: dict[str, Any], fmap_size: int, text_shift: int) -> None:
        self.kw, self.fmap_size, self.text_shift = kwargs, fmap_size, text_shift
        self.shift, self.sandwich = kwargs["shift_tokens"], kwargs["sandwich_norm"]

    def branch(self, layer: int, attn: bool) -> str:
        if self.kw["reversible"]:  # ReversibleSequence -> ReversibleBlock.f / .g -> Deterministic.net
            return f"transformer.layers.blocks.{layer}.{'f' if attn else 'g'}.net."
        return f"transformer.layers.layers.{layer}.{0 if attn else 1}."

    def inner(self, layer: int, attn: bool) -> str:
        # LayerScale.fn = PreNorm; PreNorm.fn = CachedAs / NonCached (attention) or the feed-forward; with
        # shift_tokens first CachedAs(PreShiftToken(...))
        depth = (3 if attn else 2) + (2 if self.shift else 0)
        return self.branch(layer, attn) + "fn." * depth + ("" if attn else "net.")

    def layer_tensors(self, src: Weights, layer: int, attn: bool) -> dict[str, tuple[Tensor, str]]:
        """Our branch's tensors (names relative to the branch) computed from this layer's weights."""
        branch, inner = self.branch(layer, attn), self.inner(layer, attn)
        scale_key = branch + "scale"
        scale = src.take(scale_key)
        if tuple(scale.shape) != (1, 1, self.kw["dim"]):
            raise UserError(
                f"weight {scale_key!r} has shape {tuple(scale.shape)}, but the model its hparams describe "
                f"needs (1, 1, {self.kw['dim']}): the weights do not match the hparams"
            )
        scale = scale.reshape(-1)
        got: dict[str, tuple[Tensor, str]] = {}
        for p in ("weight", "bias"):
            got[f"norm.{p}"] = (src.take(branch + f"fn.norm.{p}"), branch + f"fn.norm.{p}")
        names = (
            {
                "fn.to_qkv.weight": "to_qkv.weight",
                "fn.to_out.weight": "to_out.0.weight",
                "fn.to_out.bias": "to_out.0.bias",
            }
            if attn
            else {
                "fn.proj_in.weight": "0.weight",
                "fn.proj_in.bias": "0.bias",
                "fn.proj_out.weight": "3.weight",
                "fn.proj_out.bias": "3.bias",
            }
        )
        for ours, theirs in names.items():
            got[ours] = (src.take(inner + theirs), inner + theirs)
        last = "fn.to_out" if attn else "fn.proj_out"
        if self.sandwich:
            for p in ("weight", "bias"):
                key = branch + f"fn.norm_out.{p}"
                got[f"post_norm.{p}"] = (src.take(key) * scale, key)
        else:
            w, wk = got[f"{last}.weight"]
            b, bk = got[f"{last}.bias"]
            got[f"{last}.weight"], got[f"{last}.bias"] = (w * scale[:, None], wk), (b * scale, bk)
        return got

    def transformer(
        self, src: Weights, out: dict[str, Tensor], target: dict[str, Tensor], where: str
    ) -> None:
        depth = self.kw["depth"]
        for attn, option, ours in ((True, "shared_attn_ids", "attns"), (False, "shared_ff_ids", "ffs")):
            for key, layers in _layer_groups(self.kw[option], depth, option, where).items():
                first = self.layer_tensors(src, layers[0], attn)
                for other in layers[1:]:
                    again = self.layer_tensors(src, other, attn)
                    differ = sorted(n for n in first if not torch.equal(first[n][0], again[n][0]))
                    what = "attention" if attn else "feed-forward"
                    if differ:
                        raise refuse(
                            where,
                            option,
                            self.kw[option],
                            f"layers {layers[0]} and {other} share one {what} in DALLE-pytorch, but each "
                            "layer keeps its own LayerNorm and LayerScale, and these hold different values "
                            f"({', '.join(differ[:3])} differ); dalle_dist shares the whole residual branch, "
                            "norm included, so it cannot represent this model",
                        )
                for name, (tensor, theirs) in first.items():
                    put(out, target, f"transformer.{ours}.{key}.{name}", tensor, theirs)

    def text_rows(self, rows: Tensor, logits: bool) -> Tensor:
        """Their text rows (vocabulary + per-position padding) in our order.

        With ``text_shift`` 1 our tokenizer numbers the file's ids from 1 (its id 0 is not padding): our row
        0 (<bos>, or as a logit the padding id, never a target) and our row 1 (the file's id 0, which
        DALLE-pytorch fed to the model as padding) both start from their row 0; every other row moves up by
        one. As a logit our id 0 is pushed to SUPPRESSED_LOGIT, so no probability changes."""
        if not self.text_shift:
            return rows
        n = self.kw["num_text_tokens"] + self.kw["text_seq_len"]
        text, rest = rows[:n], rows[n:]
        first = text[:1]
        if logits and rows.dim() == 1:
            first = torch.full_like(first, SUPPRESSED_LOGIT)
        return torch.cat((first, text, rest))

    def weights(
        self, src: Weights, dalle: DALLE, vae_weights: dict[str, Tensor], where: str
    ) -> dict[str, Tensor]:
        """Ours from theirs; ``vae_weights``: the VAE's, already mapped (under ``vae.``)."""
        target = dalle.state_dict()
        out = dict(vae_weights)
        for p in ("weight", "bias"):
            put(out, target, f"to_logits_norm.{p}", src.take(f"to_logits.0.{p}"), f"to_logits.0.{p}")
            logits = self.text_rows(src.take(f"to_logits.1.{p}"), logits=True)
            put(out, target, f"to_logits.{p}", logits, f"to_logits.1.{p}")
        if self.kw["share_input_output_emb"]:
            # their SharedEmbedding modules hold the output layer as a submodule: the same tensors again
            for emb in ("text_emb", "image_emb"):
                for p in ("weight", "bias"):
                    key = f"{emb}.linear.{p}"
                    if src.has(key) and not torch.equal(src.take(key), src.state[f"to_logits.1.{p}"]):
                        raise UserError(
                            f"{where}: {key} differs from to_logits.1.{p}, which it shares: damaged"
                        )
        else:
            put(
                out,
                target,
                "text_emb.weight",
                self.text_rows(src.take("text_emb.weight"), False),
                "text_emb.weight",
            )
            put(out, target, "image_emb.weight", src.take("image_emb.weight"), "image_emb.weight")
        # rotary_emb=False: learned positions; their axial image embedding is a row and a column table
        put(out, target, "text_pos_emb.weight", src.take("text_pos_emb.weight"), "text_pos_emb.weight")
        f, dim = self.fmap_size, self.kw["dim"]
        for ours, theirs, shape in (
            ("image_row_emb.weight", "image_pos_emb.weights_0", (1, f, 1, dim)),
            ("image_col_emb.weight", "image_pos_emb.weights_1", (1, 1, f, dim)),
        ):
            table = src.take(theirs)
            if tuple(table.shape) != shape:
                raise UserError(
                    f"weight {theirs!r} has shape {tuple(table.shape)}, but the model its hparams describe "
                    f"needs {shape}: the weights do not match the hparams"
                )
            put(out, target, ours, table.reshape(f, dim), theirs)
        self.transformer(src, out, target, where)
        missing = sorted(set(target) - set(out))
        if missing:  # a mapping gap, not bad input
            raise AssertionError(f"unmapped weights of our DALLE: {missing[:5]}")
        return out


def dalle_kwargs(hparams: Any, where: str, report: Report) -> dict[str, Any]:
    """Our DALLE keywords for DALLE-pytorch DALLE ``hparams`` (tokenizer shift not yet applied)."""
    opts = _their_options(hparams, THEIR_DALLE_DEFAULTS, "DALLE", where)
    for name in ("dim", "depth"):
        if opts[name] is REQUIRED:
            raise UserError(f"{where} has no {name!r}: DALLE-pytorch's DALLE cannot be built without it")
    for name in ("dim", "depth", "num_text_tokens", "text_seq_len", "heads", "dim_head"):
        if not isinstance(opts[name], int) or isinstance(opts[name], bool) or opts[name] < 1:
            raise UserError(
                f"{where}: {name}={opts[name]!r} is not a positive integer: the hparams are damaged"
            )
    if opts["rotary_emb"]:
        raise refuse(
            where,
            "rotary_emb",
            True,
            "DALLE-pytorch's rotary embedding (a third of each head per axis, pixel frequencies on a [-1, 1] "
            "grid, image tokens at text position 8192 and text at pixel position -10, values rotated along "
            "with queries and keys) is not the one dalle_dist implements, so attention would differ; models "
            "trained with rotary_emb=False (train_dalle.py without --rotary_emb) convert",
        )
    if opts["stable"]:
        raise refuse(
            where,
            "stable",
            True,
            "DALLE-pytorch divides the transformer output by its maximum before the final LayerNorm and "
            "uses a rescaled softmax; dalle_dist divides after the norm, so the logits would differ; models "
            "trained without --stable_softmax convert",
        )
    attn_types = opts["attn_types"]
    if attn_types is None:
        attn_types = ("full",)
    elif isinstance(attn_types, str):
        attn_types = (attn_types,)
    if (
        not isinstance(attn_types, (list, tuple))
        or not attn_types
        or not all(isinstance(t, str) for t in attn_types)
    ):
        raise refuse(where, "attn_types", opts["attn_types"], "expected a sequence of attention type names")
    for name in attn_types:
        if name == "sparse":
            raise refuse(
                where,
                "attn_types",
                tuple(attn_types),
                "'sparse' layers ran DeepSpeed's block-sparse kernel with a VariableSparsityConfig whose "
                "random blocks were drawn when the model was built and are not in the checkpoint; "
                "dalle_dist's 'sparse' is a different fixed pattern",
            )
        if name == "conv_like":
            raise refuse(
                where,
                "attn_types",
                tuple(attn_types),
                "DALLE-pytorch's 'conv_like' lets an image token see the kernel-sized square window that "
                "ends at it (up to 2 x kernel_size // 2 rows above and columns to the left, none to the "
                "right); dalle_dist's 'conv_like' is the causal part of the window centred on it, a "
                "different pattern",
            )
        if name not in MAPPED_ATTN_TYPES:
            raise refuse(
                where, "attn_types", tuple(attn_types), f"{name!r} is not an attention type of {SOURCE}"
            )
    if opts["shift_tokens"] and opts["dim"] % 4:
        raise refuse(
            where,
            "shift_tokens",
            True,
            f"with dim={opts['dim']} (not a multiple of 4) DALLE-pytorch's torch.chunk splits the channels "
            "it shifts unevenly, dalle_dist shifts dim // 4 channels per direction",
        )
    kwargs: dict[str, Any] = {name: opts[name] for name in SAME_DALLE_OPTIONS}
    kwargs.update(rotary_emb=False, stable=False, attn_types=list(attn_types), ff_mult=4)
    for option in ("shared_attn_ids", "shared_ff_ids"):
        ids = opts[option]
        kwargs[option] = None if ids is None else list(ids) if isinstance(ids, (list, tuple)) else ids
    for name in THEIR_DALLE_DEFAULTS:
        default = "" if name in hparams else " (their default)"
        value = opts[name]
        if name == "sparse_attn":
            report.item(
                f"sparse_attn={value!r}{default}: dropped (no effect in {SOURCE}: layers follow attn_types)"
            )
        elif name == "attn_types":
            report.item(f"attn_types={opts['attn_types']!r}{default} -> {kwargs['attn_types']!r}")
        else:
            report.item(f"{name}={_show(value)}{default}")
    report.item("ff_mult=4 (not an option of their DALLE: its transformer's fixed value)")
    return kwargs


# ----------------------------------------------------------------------------------------- tokenizer
def _tokenizer(args: argparse.Namespace, num_text_tokens: int) -> tuple[Tokenizer, int]:
    """The tokenizer the flags name, and how far its ids are shifted from the ones the model was trained
    on (0, or 1 for files whose id 0 is not a padding token)."""
    tokenizer = tokenizer_from_flags(args)
    if tokenizer is None:
        default = (
            f" (num_text_tokens={num_text_tokens} is the size of that default tokenizer)"
            if num_text_tokens == OPENAI_BPE_VOCAB
            else ""
        )
        raise UserError(
            "a DALL-E checkpoint needs the tokenizer it was trained with, as train_dalle.py was given it: "
            "--bpe_path FILE (a YouTokenToMe .model; with --hug a Hugging Face tokenizer.json) or "
            "--chinese [--chinese_vocab DIR]; DALLE-pytorch's default tokenizer (OpenAI's simple BPE, used "
            f"without those flags) is not shipped with dalle_dist: such a model cannot be converted{default}"
        )
    shift = tokenizer.vocab_size - num_text_tokens
    shifted = (isinstance(tokenizer, HuggingFaceTokenizer) and tokenizer.to_dict().get("id_offset") == 1) or (
        # youtokentome models whose <PAD> is not id 0 are numbered from 1, as Hugging Face files are
        isinstance(tokenizer, YttmTokenizer) and getattr(tokenizer, "_offset", 0) == 1
    )
    if shift == 0 or (shift == 1 and shifted):
        return tokenizer, shift
    raise UserError(
        f"the tokenizer ({tokenizer.family!r}, {tokenizer.vocab_size} ids) is not the one the model was "
        f"trained with: its hparams say num_text_tokens={num_text_tokens}; pass the file train_dalle.py was "
        "given"
    )


# ----------------------------------------------------------------------------------------- convert
def _converted_from(src: Source) -> dict[str, Any]:
    info: dict[str, Any] = {"format": "DALLE-pytorch", "path": str(src.path.resolve())}
    for key in ("version", "epoch", "vae_class_name"):
        if isinstance(src.data.get(key), (str, int)):
            info[key] = src.data[key]
    return info


def _not_converted(src: Source, report: Report, output: Path) -> None:
    left = [
        k
        for k in ("opt_state", "scheduler_state", "optimizer", "lr_scheduler")
        if src.data.get(k) is not None
    ]
    if left:
        report.item(
            f"not converted: {', '.join(left)} (training state)"
            + (
                f": start a new run from these weights with train_dalle.py --dalle_path {output}"
                if src.kind == "dalle"
                else ""
            )
        )


def convert_vae(src: Source, output: Path, report: Report) -> Path:
    report.section(f"DiscreteVAE options ({src.where} hparams) -> dalle_dist DiscreteVAE (same names):")
    kwargs = vae_kwargs(src.hparams, f"{src.where} hparams", report)
    vae = build_vae(kwargs, f"{src.where} hparams")
    notes = list(src.notes)
    weights = Weights(src.weights, src.where, notes, SOURCE, "hparams")
    mapped = _vae_weights(weights, vae, kwargs)
    weights.check_all_taken()
    vae.load_state_dict(mapped)
    report.section("weights:")
    for note in notes:
        report.item(note)
    report.item(f"{len(mapped)} tensors mapped (encoder / decoder convolutions re-indexed, values unchanged)")
    _not_converted(src, report, output)
    meta = {"vae": describe_vae(vae), "converted_from": _converted_from(src)}
    return save_checkpoint(output, kind="vae", meta=meta, module=vae)


def _discrete_vae(src: Source, report: Report) -> tuple[DiscreteVAE, Callable[[Weights], dict[str, Tensor]]]:
    """The DiscreteVAE of ``vae_params``, and how its weights are taken from theirs."""
    report.section(f"DiscreteVAE options ({src.where} vae_params) -> dalle_dist DiscreteVAE (same names):")
    vkwargs = vae_kwargs(src.vae_params, f"{src.where} vae_params", report)
    vae = build_vae(vkwargs, f"{src.where} vae_params")
    return vae, lambda weights: _vae_weights(weights, vae, vkwargs, "vae.", "vae.")


def _vqgan_vae(
    src: Source, args: argparse.Namespace, report: Report
) -> tuple[VQGanVAE, Callable[[Weights], dict[str, Tensor]]]:
    """The VQGAN a DALL-E was trained on (train_dalle.py --taming): its architecture from the taming config
    the run was given, its weights from the checkpoint (``vae.model.*``, taming's names, as ours)."""
    if args.vqgan_config_path is None and not args.taming:
        raise UserError(
            f"{src.where} was trained on a VQGAN (train_dalle.py --taming), whose architecture the "
            "checkpoint does not record: pass the taming config it was given, --vqgan_config_path FILE.yaml, "
            "or --taming for DALLE-pytorch's default (ImageNet f16 / 1024 codes, vqgan.1024.config.yml)"
        )
    config_path = Path(args.vqgan_config_path) if args.vqgan_config_path else fetch(VQGAN_CONFIG)
    if not config_path.is_file():
        raise UserError(f"--vqgan_config_path {config_path} does not exist: pass the VQGAN's taming config")
    spec = read_taming_config(config_path)
    dd = spec["ddconfig"]
    # DALLE-pytorch's VQGanVAE takes 256 px images, log2(resolution / attn_resolutions[0]) halvings
    halvings = math.log2(dd["resolution"] / dd["attn_resolutions"][0]) if dd["attn_resolutions"] else -1
    if dd["resolution"] != 256 or halvings != len(dd["ch_mult"]) - 1:
        raise UserError(
            f"--vqgan_config_path {config_path}: DALLE-pytorch reads a VQGAN as 256 px images halved "
            f"log2(resolution / attn_resolutions[0]) times, which this one (resolution {dd['resolution']}, "
            f"attn_resolutions {dd['attn_resolutions']}, {len(dd['ch_mult']) - 1} halvings) is not: it is "
            "not the config of a VQGAN DALLE-pytorch could train on"
        )
    weights_file = Path(src.where)
    files = {"vqgan_model_path": weights_file, "vqgan_config_path": config_path}
    vae = VQGanVAE.from_config(
        {
            "class": "VQGanVAE",
            **{k: str(v.resolve()) for k, v in files.items()},
            "sha256": {k: sha256(v) for k, v in files.items()},
            "model": spec,
        }
    )
    report.section(f"VQGAN ({src.where}: vae_class_name {src.data.get('vae_class_name')!r}):")
    report.item(
        f"{spec['target'].rsplit('.', 1)[-1]} of {config_path}: {spec['n_embed']} codes, {vae.fmap_size} "
        f"x {vae.fmap_size} per 256 px image; weights from the checkpoint's vae.model.* (taming's names, as "
        "ours)"
    )

    def take(weights: Weights) -> dict[str, Tensor]:
        target = {f"vae.model.{k}": v for k, v in vae.model.state_dict().items()}
        out: dict[str, Tensor] = {}
        for key in target:  # the same names on both sides
            put(out, target, key, weights.take(key), key)
        losses = [k for k in weights.state if k.startswith("vae.model.loss.")]
        if losses:  # taming's VQModel built with its lossconfig holds LPIPS and the discriminator
            weights.taken.update(losses)
            src.notes.append(f"{len(losses)} vae.model.loss.* tensors (the VQGAN's training loss) dropped")
        return out

    return vae, take


def convert_dalle(src: Source, args: argparse.Namespace, output: Path, report: Report) -> Path:
    class_name = src.data.get("vae_class_name")
    vqgan = class_name == "VQGanVAE" or (
        src.vae_params is None and class_name is None and any(k.startswith("vae.model.") for k in src.weights)
    )
    if not vqgan and (src.vae_params is None or (class_name is not None and class_name != "DiscreteVAE")):
        raise refuse(
            src.where,
            "vae_params",
            src.vae_params,
            f"the DALL-E was trained on OpenAI's dVAE ({class_name or 'OpenAIDiscreteVAE'}), which this "
            "converter does not read yet; models trained on a DiscreteVAE (train_dalle.py --vae_path) or a "
            "VQGAN (--taming) convert",
        )
    report.section(f"DALLE options ({src.where} hparams) -> dalle_dist DALLE (same name and meaning):")
    kwargs = dalle_kwargs(src.hparams, f"{src.where} hparams", report)
    vae, take_vae = _vqgan_vae(src, args, report) if vqgan else _discrete_vae(src, report)
    tokenizer, shift = _tokenizer(args, int(kwargs["num_text_tokens"]))
    mapping = DalleMapping(kwargs, vae.image_size // 2**vae.num_layers, shift)
    try:
        dalle = DALLE(vae=vae, **{**kwargs, "num_text_tokens": tokenizer.vocab_size})
    except (TypeError, ValueError) as e:
        raise UserError(f"{src.where} hparams: these options do not make a DALLE: {e}") from None
    notes = src.notes
    weights = Weights(src.weights, src.where, notes, SOURCE, "hparams")
    mapped = mapping.weights(weights, dalle, take_vae(weights), src.where)
    weights.check_all_taken()
    dalle.load_state_dict(mapped)
    report.section("tokenizer:")
    report.item(f"{tokenizer.family!r} with {tokenizer.vocab_size} ids, saved in the checkpoint")
    if shift:
        report.item(
            "the file's id 0 is not a padding token: dalle_dist numbers its ids from 1, so the text "
            f"embedding and text logits move up one row (num_text_tokens {kwargs['num_text_tokens']} -> "
            f"{tokenizer.vocab_size}); the file's id 0, which DALLE-pytorch read as padding, gets <bos>'s "
            "embedding"
        )
    report.section("weights:")
    for note in notes:
        report.item(note)
    report.item(
        f"{len(mapped)} tensors mapped; LayerScale folded into each branch's "
        + ("output LayerNorm (sandwich_norm)" if kwargs["sandwich_norm"] else "output projection")
        + "; axial image positions split into row and column tables"
    )
    _not_converted(src, report, output)
    meta = {
        "model": dalle.config(),
        "vae": describe_vae(dalle.vae),
        "vae_source": f"{src.path} (converted from DALLE-pytorch)",
        "converted_from": _converted_from(src),
    }
    return save_checkpoint(output, kind="dalle", meta=meta, module=dalle, tokenizer=tokenizer)


def convert(args: argparse.Namespace, report: Report) -> Path:
    """Convert the checkpoint at ``args.path`` (``args.tag``, the tokenizer flags) into ``args.output``."""
    src = read_source(args.path, args.tag)
    what = "DALL-E" if src.kind == "dalle" else "VAE"
    report.section(f"{SOURCE} {what} checkpoint {src.describe()}")
    if src.kind == "vae" and (args.bpe_path or args.hug or args.chinese or args.chinese_vocab):
        raise UserError("the tokenizer flags are for DALL-E checkpoints: a VAE has no tokenizer; drop them")
    if src.kind == "dalle":
        folder = convert_dalle(src, args, args.output, report)
    else:
        folder = convert_vae(src, args.output, report)
    flag = "generate.py --dalle_path" if src.kind == "dalle" else "train_dalle.py --vae_path"
    report.section(f"wrote {folder}: a dalle_dist {what} checkpoint ({flag} {folder})")
    return folder
