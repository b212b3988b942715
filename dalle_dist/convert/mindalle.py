"""minDALL-E's published folder (Kakao Brain, ``1.3B/``) as a dalle_dist DALL-E checkpoint.

    python -m dalle_dist.convert 1.3B --output models/mindalle

The folder, as its ``Dalle.from_pretrained`` reads it (layouts and licences: docs/pretrained_layouts.md):
``config.yaml`` (merged over minDALL-E's defaults, ``DEFAULTS`` here), ``stage1_last.ckpt`` (the VQGAN) and
``stage2_last.ckpt`` (the GPT), each ``{"state_dict": ...}``, and ``tokenizer/bpe-16k-vocab.json`` +
``bpe-16k-merges.txt`` (a ``tokenizers`` CharBPE, lower-cased, with ``[PAD]`` as its padding token).

What it becomes: our VQGanVAE (taming's module names, which minDALL-E's stage 1 keeps) inside a DALLE with
the plain GPT layout (``text_pad_id``, absolute positions, biased q / k / v, GELU feed-forward, separate
heads), and the tokenizer as a Hugging Face ``tokenizer.json``. The functions agree exactly: the files'
tensors are copied (q, k and v concatenated), and where the tokenizer's ``[PAD]`` is not id 0 (dalle_dist
pads with 0) the two ids trade places in the vocabulary, the text embedding and the text head, which
renames tokens and changes no probability. The files are read with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from ..checkpoint import describe_vae, save_checkpoint
from ..errors import UserError, load_failure
from ..files import sha256
from ..models import DALLE
from ..models.pretrained import VQGanVAE
from ..models.vqgan import check_ddconfig
from ..text import HuggingFaceTokenizer
from .common import Report, Weights, load_file, put, refuse, state_dict

SOURCE = "minDALL-E"
CONFIG, STAGE1, STAGE2 = "config.yaml", "stage1_last.ckpt", "stage2_last.ckpt"
VOCAB, MERGES = "tokenizer/bpe-16k-vocab.json", "tokenizer/bpe-16k-merges.txt"
FILES = (CONFIG, STAGE1, STAGE2, VOCAB, MERGES)
PAD = "[PAD]"
# minDALL-E's DefaultConfig (utils/config.py): what config.yaml is merged over
DEFAULTS: dict[str, Any] = {
    "dataset": {
        "dataset": None,
        "tokenizer_type": "CharBPE",
        "context_length": 64,
        "image_resolution": 256,
        "transforms": "dalle-vqvae",
        "bpe_pdrop": None,
    },
    "stage1": {
        "type": "vqgan",
        "embed_dim": 256,
        "n_embed": 16384,
        "hparams": {
            "double_z": False,
            "z_channels": 256,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 128,
            "ch_mult": [1, 1, 2, 2, 4],
            "num_res_blocks": 2,
            "attn_resolutions": [16],
            "pdrop": 0.0,
        },
    },
    "stage2": {
        "type": "transformer1d",
        "vocab_size_txt": 16384,
        "vocab_size_img": 16384,
        "use_cls_cond": None,
        "hparams": {
            "embed_dim": 1536,
            "n_layers": 42,
            "n_heads": 24,
            "n_dense_layers": 42,
            "ctx_len_img": 256,
            "ctx_len_txt": 64,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "mlp_bias": True,
            "attn_bias": True,
            "gelu_use_approx": False,
            "use_head_txt": True,
            "n_classes": None,
        },
    },
}
# training settings beside the model's (their optimizer and experiment sections): read, not converted
TRAINING_SECTIONS = ("optimizer", "experiment")


def is_mindalle_folder(path: Path) -> bool:
    """Whether ``path`` looks like minDALL-E's folder (any of its files is there)."""
    return path.is_dir() and any((path / name).exists() for name in (CONFIG, STAGE1, STAGE2))


# ----------------------------------------------------------------------------------------- config.yaml
def _merged(defaults: dict[str, Any], given: Any, where: str) -> dict[str, Any]:
    """``given`` over ``defaults`` section by section; a key minDALL-E's config does not have is refused,
    as its structured config refuses it."""
    if given is None:
        return copy.deepcopy(defaults)
    if not isinstance(given, dict):
        raise UserError(f"{where} is {type(given).__name__}, expected a mapping of minDALL-E's options")
    unknown = sorted(set(map(str, given)) - set(defaults))
    if unknown:
        raise UserError(
            f"{where}.{unknown[0]} is not an option of {SOURCE}'s config (known: {', '.join(defaults)}): "
            "the folder was not written by minDALL-E, or by another version of it"
        )
    out = {}
    for key, default in defaults.items():
        value = given.get(key, default)
        out[key] = _merged(default, value, f"{where}.{key}") if isinstance(default, dict) else value
    return out


def read_config(folder: Path, report: Report) -> dict[str, Any]:
    """``config.yaml`` merged over minDALL-E's defaults, every option it fixes checked."""
    path = folder / CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not YAML ({load_failure(e)}): pass minDALL-E's folder as published"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds {type(data).__name__}, expected minDALL-E's config (a mapping)")
    left = sorted(set(map(str, data)) - set(DEFAULTS) - set(TRAINING_SECTIONS))
    if left:
        raise UserError(
            f"{path}: section {left[0]!r} is not one of minDALL-E's "
            f"({', '.join((*DEFAULTS, *TRAINING_SECTIONS))})"
        )
    config = {key: _merged(DEFAULTS[key], data.get(key), f"{path}: {key}") for key in DEFAULTS}
    trained = [key for key in TRAINING_SECTIONS if key in data]
    if trained:
        report.item(
            f"not converted: {', '.join(trained)} (training settings; train_dalle.py has its own flags)"
        )
    _check_config(config, str(path))
    return config


def _check_config(config: dict[str, Any], where: str) -> None:
    data, s1, s2 = config["dataset"], config["stage1"], config["stage2"]
    h1, h2 = s1["hparams"], s2["hparams"]
    for section, key, value in (
        ("dataset", "tokenizer_type", "CharBPE"),
        ("stage1", "type", "vqgan"),
        ("stage2", "type", "transformer1d"),
    ):
        if config[section][key] != value:
            raise refuse(
                where,
                f"{section}.{key}",
                config[section][key],
                f"the published minDALL-E has {value!r}, the only kind this converter reads",
            )
    for section, values, names in (
        ("stage1", s1, ("embed_dim", "n_embed")),
        ("stage2", s2, ("vocab_size_txt", "vocab_size_img")),
        (
            "stage2.hparams",
            h2,
            ("embed_dim", "n_layers", "n_heads", "n_dense_layers", "ctx_len_img", "ctx_len_txt"),
        ),
        ("dataset", data, ("context_length", "image_resolution")),
    ):
        for name in names:
            value = values[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{where}: {section}.{name}={value!r} is not a positive integer")
    rules = (  # (broken?, option, value, why)
        (
            bool(s2["use_cls_cond"]),
            "stage2.use_cls_cond",
            s2["use_cls_cond"],
            "that is minDALL-E's class-conditional ImageGPT, not its text-to-image model",
        ),
        (
            h2["n_layers"] != h2["n_dense_layers"],
            "stage2.hparams.n_dense_layers",
            h2["n_dense_layers"],
            f"minDALL-E needs it equal to n_layers ({h2['n_layers']})",
        ),
        (
            h2["embed_dim"] % h2["n_heads"] != 0,
            "stage2.hparams.n_heads",
            h2["n_heads"],
            f"it does not divide embed_dim {h2['embed_dim']}",
        ),
        (
            bool(h2["gelu_use_approx"]),
            "stage2.hparams.gelu_use_approx",
            h2["gelu_use_approx"],
            "the tanh approximation of GELU is not dalle_dist's (exact, erf) GELU, so the feed-forward "
            "would differ",
        ),
        (
            h2["ctx_len_txt"] != data["context_length"],
            "stage2.hparams.ctx_len_txt",
            h2["ctx_len_txt"],
            f"minDALL-E pads every caption to dataset.context_length ({data['context_length']}), which "
            "must equal it",
        ),
        (
            data["image_resolution"] != h1["resolution"],
            "dataset.image_resolution",
            data["image_resolution"],
            f"the VQGAN (stage1.hparams.resolution) takes {h1['resolution']} px images",
        ),
        (
            s2["vocab_size_img"] != s1["n_embed"],
            "stage2.vocab_size_img",
            s2["vocab_size_img"],
            f"the VQGAN has {s1['n_embed']} codes (stage1.n_embed)",
        ),
    )
    for broken, option, value, why in rules:
        if broken:
            raise refuse(where, option, value, why)


def _ddconfig(hparams: dict[str, Any], where: str) -> dict[str, Any]:
    dd = {k: v for k, v in hparams.items() if k != "pdrop"}
    dd["dropout"] = hparams["pdrop"]
    try:
        return check_ddconfig(dd)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: stage1.hparams do not make a VQGAN: {e}") from None


# ----------------------------------------------------------------------------------------- tokenizer
def _swap_ids(tokenizer_json: str, a: int, b: int) -> str:
    """The tokenizer with ids ``a`` and ``b`` trading places (vocabulary and added tokens)."""
    d = json.loads(tokenizer_json)
    trade = {a: b, b: a}
    vocab = d["model"]["vocab"]
    for token, i in vocab.items():
        vocab[token] = trade.get(i, i)
    for added in d.get("added_tokens", []):
        added["id"] = trade.get(added["id"], added["id"])
    return json.dumps(d, ensure_ascii=False)


def read_tokenizer(folder: Path, vocab_size: int, report: Report) -> tuple[HuggingFaceTokenizer, int]:
    """minDALL-E's tokenizer as ours, and the id its ``[PAD]`` had (moved to 0 when it was not there)."""
    from tokenizers import CharBPETokenizer  # a dependency of transformers; imported when it is needed

    vocab, merges = folder / VOCAB, folder / MERGES
    try:
        bpe = CharBPETokenizer.from_file(str(vocab), str(merges), unk_token="[UNK]", lowercase=True)
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise UserError(
            f"{vocab} / {merges} are not a CharBPE tokenizer's files ({load_failure(e)}): pass minDALL-E's "
            "folder as published"
        ) from None
    bpe.add_special_tokens([PAD])
    pad, size = bpe.token_to_id(PAD), bpe.get_vocab_size()
    if size != vocab_size:
        raise UserError(
            f"{vocab} holds {size} tokens with {PAD}, but config.yaml says "
            f"stage2.vocab_size_txt={vocab_size}: the tokenizer does not belong to these weights"
        )
    text = bpe.to_str()
    if pad != 0:
        text = _swap_ids(text, 0, pad)
        report.item(
            f"{PAD} is id {pad} of the file; dalle_dist pads with id 0, so {PAD} and the file's id 0 "
            f"({bpe.id_to_token(0)!r}) trade ids (their text embedding rows and text-head rows move with "
            "them)"
        )
    try:
        tokenizer = HuggingFaceTokenizer.from_dict({"family": "hf", "tokenizer_json": text, "id_offset": 0})
    except ValueError as e:
        raise UserError(f"{vocab}: {e}") from None
    report.item(
        f"CharBPE ({vocab.name}, {merges.name}, lower-cased) with {size} ids, {PAD} as padding: saved in the "
        "checkpoint as a Hugging Face tokenizer.json"
    )
    return tokenizer, pad


# ----------------------------------------------------------------------------------------- weights
def _read_state(path: Path, what: str) -> dict[str, Tensor]:
    data = load_file(path, f"minDALL-E's {what} checkpoint ({path.name} in its folder)", SOURCE)
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    return state_dict(data, f"{path} 'state_dict'")


def _trade_rows(rows: Tensor, pad: int) -> Tensor:
    if pad == 0:
        return rows
    out = rows.clone()
    out[[0, pad]] = rows[[pad, 0]]
    return out


def stage1_weights(src: Weights, target: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    """Their VQGAN's state dict under our ``vae.model.`` (the names are taming's on both sides)."""
    out: dict[str, Tensor] = {}
    for key in target:
        if key.startswith("vae.model."):
            theirs = key.removeprefix("vae.model.")
            put(out, target, key, src.take(theirs), theirs, "config.yaml")
    losses = [k for k in src.state if k.startswith("loss.")]
    if losses:  # a stage 1 saved in VQGAN training: its perceptual loss and discriminator
        src.taken.update(losses)
        notes.append(
            f"{len(losses)} loss.* tensors (VQGAN training's loss and discriminator) not needed: dropped"
        )
    return out


def stage2_weights(
    src: Weights, target: dict[str, Tensor], hparams: dict[str, Any], pad: int
) -> dict[str, Tensor]:
    """Their GPT's state dict as our DALLE's (docs/pretrained_layouts.md has the table)."""
    out: dict[str, Tensor] = {}

    def copy_(ours: str, theirs: str, tensor: Tensor | None = None) -> None:
        put(out, target, ours, src.take(theirs) if tensor is None else tensor, theirs, "config.yaml")

    def bias(ours: str, theirs: str, present: bool) -> None:
        # without their bias, ours (always there) is zero: the same affine map
        if present:
            copy_(ours, theirs)
        else:
            out[ours] = torch.zeros_like(target[ours], device="cpu")

    copy_("text_emb.weight", "tok_emb_txt.weight", _trade_rows(src.take("tok_emb_txt.weight"), pad))
    copy_("image_emb.weight", "tok_emb_img.weight")
    copy_("text_pos_emb.weight", "pos_emb_txt.weight")
    copy_("image_abs_pos_emb.weight", "pos_emb_img.weight")
    for i in range(hparams["n_layers"]):
        theirs, attn, ff = f"blocks.{i}.", f"transformer.attns.{i}.", f"transformer.ffs.{i}."
        for p in ("weight", "bias"):
            copy_(f"{attn}norm.{p}", f"{theirs}ln1.{p}")
            copy_(f"{ff}norm.{p}", f"{theirs}ln2.{p}")
        parts = ("query", "key", "value")
        qkv = torch.cat([src.take(f"{theirs}attn.{n}.weight") for n in parts])
        copy_(f"{attn}fn.to_qkv.weight", f"{theirs}attn.{{query,key,value}}.weight", qkv)
        if hparams["attn_bias"]:
            qkv_b = torch.cat([src.take(f"{theirs}attn.{n}.bias") for n in parts])
            copy_(f"{attn}fn.to_qkv.bias", f"{theirs}attn.{{query,key,value}}.bias", qkv_b)
        copy_(f"{attn}fn.to_out.weight", f"{theirs}attn.proj.weight")
        bias(f"{attn}fn.to_out.bias", f"{theirs}attn.proj.bias", hparams["attn_bias"])
        copy_(f"{ff}fn.proj_in.weight", f"{theirs}mlp.0.weight")
        bias(f"{ff}fn.proj_in.bias", f"{theirs}mlp.0.bias", hparams["mlp_bias"])
        copy_(f"{ff}fn.proj_out.weight", f"{theirs}mlp.2.weight")
        bias(f"{ff}fn.proj_out.bias", f"{theirs}mlp.2.bias", hparams["mlp_bias"])
    for p in ("weight", "bias"):
        copy_(f"to_logits_norm.{p}", f"ln_f.{p}")
    copy_("text_head.weight", "head_txt.weight", _trade_rows(src.take("head_txt.weight"), pad))
    copy_("image_head.weight", "head_img.weight")
    return out


# ----------------------------------------------------------------------------------------- convert
def _check_files(folder: Path) -> None:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{folder} lacks {', '.join(missing)}: a minDALL-E folder holds {', '.join(FILES)} (extract "
            "all of 1.3B.tar.gz, as published)"
        )


def _vae(config: dict[str, Any], folder: Path | None) -> VQGanVAE:
    """The VQGAN of ``config``; its description records ``folder``'s files (none: placeholders)."""
    s1 = config["stage1"]
    where = str(folder / CONFIG) if folder else "minDALL-E's config"
    spec = {
        "target": "taming.models.vqgan.VQModel",  # minDALL-E's stage 1 is that network
        "embed_dim": s1["embed_dim"],
        "n_embed": s1["n_embed"],
        "ddconfig": _ddconfig(s1["hparams"], where),
    }
    keys = ("vqgan_model_path", "vqgan_config_path")
    if folder is None:
        files, digests = dict.fromkeys(keys, "-"), dict.fromkeys(keys, "-")
    else:
        paths = dict(zip(keys, (folder / STAGE1, folder / CONFIG), strict=True))
        files = {k: str(v.resolve()) for k, v in paths.items()}
        digests = {k: sha256(v) for k, v in paths.items()}
    return VQGanVAE.from_config({"class": "VQGanVAE", **files, "sha256": digests, "model": spec})


def build_model(
    config: dict[str, Any] = DEFAULTS, folder: Path | None = None, report: Report | None = None
) -> DALLE:
    """minDALL-E's model as the converter makes it from a merged config (``DEFAULTS``: the published
    1.3B), untrained: its VQGAN and our DALLE in the plain GPT layout. Under ``torch.device("meta")`` it
    has shapes alone (what the converter and the benchmarks need)."""
    options = dalle_options(config, report or Report())
    try:
        return DALLE(vae=_vae(config, folder), **options)
    except (TypeError, ValueError) as e:
        where = folder / CONFIG if folder else "minDALL-E's config"
        raise UserError(f"{where}: these options do not make a DALLE: {e}") from None


def dalle_options(config: dict[str, Any], report: Report) -> dict[str, Any]:
    """Our DALLE keywords for minDALL-E's stage 2 (its padding token moved to id 0)."""
    s2, h2 = config["stage2"], config["stage2"]["hparams"]
    options = {
        "dim": h2["embed_dim"],
        "depth": h2["n_layers"],
        "heads": h2["n_heads"],
        "dim_head": h2["embed_dim"] // h2["n_heads"],
        "num_text_tokens": s2["vocab_size_txt"],
        "text_seq_len": h2["ctx_len_txt"],
        "attn_types": ("full",),
        "ff_mult": 4,
        "attn_dropout": float(h2["attn_pdrop"]),
        "ff_dropout": float(h2["resid_pdrop"]),
        "rotary_emb": False,
        "shift_tokens": False,
        "qkv_bias": bool(h2["attn_bias"]),
        "ff_activation": "gelu",
        "image_pos_emb": "absolute",
        "separate_heads": True,
        "text_pad_id": 0,
    }
    report.item(
        f"embed_dim={h2['embed_dim']}, n_layers={h2['n_layers']}, n_heads={h2['n_heads']}, "
        f"ctx_len_txt={h2['ctx_len_txt']}, vocab_size_txt={s2['vocab_size_txt']} -> dim, depth, heads "
        f"(dim_head {options['dim_head']}), text_seq_len, num_text_tokens"
    )
    report.item(
        "plain GPT layout: text_pad_id (no begin token), absolute image positions, qkv_bias="
        f"{options['qkv_bias']}, GELU feed-forward (ff_mult 4), separate text and image heads"
    )
    for name, present in (("attn_bias", h2["attn_bias"]), ("mlp_bias", h2["mlp_bias"])):
        if not present:
            report.item(f"{name}=False: our output biases are there, set to zero (the same map; they train)")
    report.item(
        f"attn_pdrop={h2['attn_pdrop']} -> attn_dropout; resid_pdrop={h2['resid_pdrop']} -> ff_dropout "
        f"(after the feed-forward's GELU); embd_pdrop={h2['embd_pdrop']} not kept (training only)"
    )
    return options


def convert(args: argparse.Namespace, report: Report) -> Path:
    """Convert minDALL-E's folder ``args.path`` into the DALL-E checkpoint ``args.output``."""
    folder, output = Path(args.path), args.output
    foreign = (args.tag, args.bpe_path, args.hug, args.chinese, args.chinese_vocab, args.vqgan_config_path)
    if any(foreign) or args.taming:
        raise UserError(
            f"{folder} is a minDALL-E folder, which holds its own tokenizer and VQGAN (and no DeepSpeed "
            "tags): drop --tag, --bpe_path, --hug, --chinese, --vqgan_config_path and --taming"
        )
    _check_files(folder)
    report.section(f"{SOURCE} folder {folder}")
    report.section(f"options ({CONFIG}, merged over minDALL-E's defaults) -> dalle_dist DALLE:")
    config = read_config(folder, report)
    report.section("tokenizer:")
    tokenizer, pad = read_tokenizer(folder, config["stage2"]["vocab_size_txt"], report)
    report.section("options, continued:")
    with torch.device("meta"):  # shapes and config only: the weights come from the files
        dalle = build_model(config, folder, report)
    vae = dalle.vae
    if (vae.image_seq_len, vae.num_tokens) != (
        config["stage2"]["hparams"]["ctx_len_img"],
        dalle.num_image_tokens,
    ):
        raise refuse(
            str(folder / CONFIG),
            "stage2.hparams.ctx_len_img",
            config["stage2"]["hparams"]["ctx_len_img"],
            f"the VQGAN makes {vae.image_seq_len} codes an image ({vae.fmap_size} x {vae.fmap_size})",
        )
    target = dalle.state_dict()
    notes: list[str] = []
    stage1 = Weights(
        _read_state(folder / STAGE1, "stage-1 (VQGAN)"), str(folder / STAGE1), notes, SOURCE, CONFIG
    )
    weights = stage1_weights(stage1, target, notes)
    stage1.check_all_taken()
    stage2 = Weights(
        _read_state(folder / STAGE2, "stage-2 (GPT)"), str(folder / STAGE2), notes, SOURCE, CONFIG
    )
    weights.update(stage2_weights(stage2, target, config["stage2"]["hparams"], pad))
    stage2.check_all_taken()
    missing = sorted(set(target) - set(weights))
    if missing:  # a mapping gap, not bad input
        raise AssertionError(f"unmapped weights of our DALLE: {missing[:5]}")
    report.section("weights:")
    for note in notes:
        report.item(note)
    report.item(f"{len(weights)} tensors mapped (q, k, v concatenated; values unchanged)")
    meta = {
        "model": dalle.config(),
        "vae": describe_vae(vae),
        "vae_source": f"{folder / STAGE1} (minDALL-E's VQGAN)",
        "converted_from": {"format": SOURCE, "path": str(folder.resolve()), "pad_id_in_file": pad},
    }
    written = save_checkpoint(output, kind="dalle", meta=meta, weights=weights, tokenizer=tokenizer)
    report.section(f"wrote {written}: a dalle_dist DALL-E checkpoint (generate.py --dalle_path {written})")
    return written
