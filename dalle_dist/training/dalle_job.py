"""``train_dalle.py``: train DALL-E on the tokens of a trained VAE, from a folder or the built-in dataset."""

from __future__ import annotations

import argparse
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attention import ATTN_IMPLS, PATTERNS
from ..checkpoint import RunDirectory, describe_vae, load_dalle, load_vae
from ..cli import (
    Parser,
    check_tokenizer_flags,
    cli,
    int_list,
    nonneg_float,
    positive_float,
    positive_int,
    refuse,
    str_list,
    unit_interval,
)
from ..data import DataConfig, image_grid
from ..data.shards import Skipped
from ..data.token_cache import TokenCache, item_entry, stream_key, vae_hash
from ..download import VQGAN_CONFIG, VQGAN_MODEL, fetch
from ..errors import UserError
from ..models import DALLE, DALLEConfig
from ..models.dalle_config import IMAGE_POS_EMBS
from ..models.pretrained import OpenAIDiscreteVAE, VQGanVAE
from ..models.transformer import FF_ACTIVATIONS
from ..text import Tokenizer
from .captions import CaptionTask, caption_tokenizer, check_captions
from .flags import add_caption_data_flags, add_common_flags, backend_config, data_config, refuse_changed_flags
from .job import (
    load_data,
    load_validation,
    parse_flags,
    prepare_run,
    resume_point,
    run_training,
    seed_everything,
    start_backend,
)
from .throughput import dalle_flops_per_sample


def build_parser() -> Parser:
    parser = Parser(prog="train_dalle.py", description="Train DALL-E on text + VAE image tokens.")
    add_common_flags(parser, "train_dalle")
    refuse(parser, "--dalle_output_file_name", "checkpoints go into the run directory: name it with --output",
           takes_value=True)  # fmt: skip
    src = parser.add_argument_group("inputs")
    src.add_argument("--vae_path", type=Path, default=None, help="train_vae.py run directory or checkpoint")
    src.add_argument(
        "--taming",
        action="store_true",
        help="use a pretrained Taming-Transformers VQGAN (frozen) as the VAE; without the two paths below, "
        "DALLE-pytorch's ImageNet VQGAN is downloaded once into ~/.cache/dalle_dist",
    )
    src.add_argument("--vqgan_model_path", type=Path, default=None, help="--taming: the VQGAN's .ckpt")
    src.add_argument("--vqgan_config_path", type=Path, default=None, help="--taming: its project .yaml")
    src.add_argument(
        "--openai_enc_path", type=Path, default=None, help="OpenAI's dVAE encoder (a state dict; see docs)"
    )
    src.add_argument(
        "--openai_dec_path", type=Path, default=None, help="OpenAI's dVAE decoder (a state dict)"
    )
    src.add_argument("--dalle_path", type=Path, default=None, help="start from this DALL-E (fine-tuning)")
    add_caption_data_flags(src)
    src.add_argument(
        "--image_tokens",
        type=Path,
        default=None,
        help="the data's image tokens, encoded once by python -m dalle_dist.encode_tokens with this "
        "run's VAE: train on them instead of encoding pixels every step (no random crops)",
    )

    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=positive_int, default=4)
    g.add_argument("--learning_rate", type=positive_float, default=3e-4)
    g.add_argument("--clip_grad_norm", type=positive_float, default=0.5)
    g.add_argument("--lr_decay", action="store_true", help="reduce the learning rate on plateaus")
    g.add_argument(
        "--null_cond_prob",
        type=unit_interval,
        default=0.0,
        help="share of captions dropped in training (enables --cond_scale guidance)",
    )

    m = parser.add_argument_group("model")
    m.add_argument("--dim", type=positive_int, default=512)
    m.add_argument("--text_seq_len", type=positive_int, default=256)
    m.add_argument("--depth", type=positive_int, default=2)
    m.add_argument("--heads", type=positive_int, default=8)
    m.add_argument("--dim_head", type=positive_int, default=64)
    m.add_argument("--ff_dropout", type=unit_interval, default=0.0)
    m.add_argument("--attn_dropout", type=unit_interval, default=0.0)
    m.add_argument("--reversible", action="store_true")
    m.add_argument("--loss_img_weight", type=nonneg_float, default=7)
    m.add_argument(
        "--attn_types",
        type=str_list,
        default=["full"],
        help=f"comma-separated, cycled through layers: {', '.join(PATTERNS)}",
    )
    m.add_argument("--shift_tokens", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--rotary_emb", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--shared_attn_ids", type=int_list, default=None)
    m.add_argument("--shared_ff_ids", type=int_list, default=None)
    m.add_argument("--share_input_output_emb", action="store_true")
    # a plain GPT's layout (minDALL-E's): with --no_rotary_emb --no_shift_tokens
    m.add_argument("--qkv_bias", action="store_true", help="biases on the attention's q, k, v projections")
    m.add_argument("--ff_activation", choices=FF_ACTIVATIONS, default="geglu", help="GEGLU, or a GPT's GELU")
    m.add_argument(
        "--image_pos_emb",
        choices=IMAGE_POS_EMBS,
        default="axial",
        help="without rotary embedding: a row's plus a column's embedding, or one per image position",
    )
    m.add_argument(
        "--separate_heads", action="store_true", help="text and image output heads of their own, no biases"
    )
    m.add_argument("--stable_softmax", action="store_true")
    m.add_argument(
        "--activation_checkpointing",
        action="store_true",
        help="recompute each block's activations during backward (less memory, ~1/3 more compute); "
        "the alternative to --reversible",
    )
    m.add_argument(
        "--attn_impl",
        choices=ATTN_IMPLS,
        default="auto",
        help="how patterned attention runs: flex is FlexAttention's block-sparse Triton kernels (GPU), "
        "structured computes only the pattern's band of keys, dense masks a full score matrix; auto picks "
        "flex on a GPU and the faster of the other two measured on a CPU",
    )
    return parser


class DALLETask(CaptionTask):
    kind = "dalle"

    def __init__(
        self,
        dalle: DALLE,
        tokenizer: Tokenizer,
        meta: dict[str, Any],
        *,
        truncate_captions: bool = False,
        null_cond_prob: float = 0.0,
        tokens: TokenCache | None = None,
    ) -> None:
        super().__init__(dalle, tokenizer, meta, truncate_captions)
        self.null_cond_prob = null_cond_prob
        self.tokens = tokens  # --image_tokens: items carry token ids [n] instead of pixels
        self.sample_text: Tensor | None = None  # the fixed prompts of the sample grids

    def make_item(self, dataset: Any, index: int, rng: random.Random) -> tuple[Tensor, Tensor]:
        if self.tokens is None:
            return super().make_item(dataset, index, rng)
        key, captions = item_entry(dataset, index, rng)
        tokens = self.tokens.get(key)
        if tokens is None:  # TokenCache.check found every key at start: the file changed under the run
            raise UserError(
                f"sample {key!r} is not in --image_tokens {self.tokens.path}: rerun encode_tokens"
            )
        return self.make_sample(tokens, captions, rng)

    def sample_from_key(
        self, dataset: Any, url: str, key: str, captions: list[str], rng: random.Random
    ) -> tuple[Tensor, Tensor] | Skipped | None:
        """A shard sample from its cached tokens (``--image_tokens``), without decoding its image."""
        if self.tokens is None:
            return None
        tokens = self.tokens.stream_item(url, key, stream_key(dataset, url, key, rng))
        return tokens if isinstance(tokens, Skipped) else self.make_sample(tokens, captions, rng)

    def loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, float]]:
        text, images = batch
        loss, text_loss, image_loss = model(
            text, images, return_loss=True, null_cond_prob=self.null_cond_prob, return_loss_parts=True
        )
        return loss, {"text_loss": text_loss.detach(), "image_loss": image_loss.detach()}

    @torch.no_grad()
    def save_samples(self, module: nn.Module, batch: tuple[Tensor, Tensor], step: int, folder: Path) -> Path:
        if self.sample_text is None:  # the first batch's captions, kept for the whole run (and its resumes)
            self.sample_text = batch[0][:4].detach().cpu()
        text = self.sample_text.to(batch[0].device)
        images = module.generate_images(text, filter_thres=0.9)
        images = module.vae.denormalize(images) if hasattr(module.vae, "denormalize") else images
        path = folder / f"dalle-step-{step:08d}.png"
        image_grid(images.clamp(0, 1).cpu()).save(path)
        captions = [self.tokenizer.decode(t) for t in text.tolist()]
        path.with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        return path

    def state_dict(self) -> dict[str, Any]:
        return {} if self.sample_text is None else {"sample_text": self.sample_text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sample_text = state.get("sample_text")

    def flops_per_sample(self) -> float:
        return dalle_flops_per_sample(self.model)

    def tokens_per_sample(self) -> int:
        return self.model.total_seq_len - 1

    def checkpoint_args(self) -> dict[str, Any]:
        meta = {"model": self.model.config(), "vae": describe_vae(self.model.vae), **self.meta}
        return {"kind": "dalle", "meta": meta, "tokenizer": self.tokenizer}


# flags named otherwise than the DALLEConfig field they set
FLAG_OF_FIELD = {"stable": "stable_softmax"}


def model_config(args: argparse.Namespace, num_text_tokens: int) -> DALLEConfig:
    """The DALLEConfig of the model flags: each field from the flag of its name (``FLAG_OF_FIELD`` says
    where the names differ); fields without a flag keep their defaults."""
    values = {}
    for field in fields(DALLEConfig):
        flag = FLAG_OF_FIELD.get(field.name, field.name)
        if hasattr(args, flag):
            values[field.name] = getattr(args, flag)
    return DALLEConfig.from_kwargs(**{**values, "num_text_tokens": num_text_tokens})


def _image_tokens(
    args: argparse.Namespace, vae: nn.Module, data: DataConfig, dataset: Any, log: bool
) -> TokenCache | None:
    """``--image_tokens``, opened and checked against this run's VAE and data (one line on failure)."""
    if args.image_tokens is None:
        return None
    tokens = TokenCache.load(args.image_tokens)
    tokens.check(vae_hash(describe_vae(vae), vae.state_dict()), data.image_size, dataset)
    ratio = getattr(dataset, "resize_ratio", None)  # folders and shards crop at random; shapes do not
    if log and ratio is not None:
        crops = f"the random crops of --random_resize_crop_lower_ratio {ratio}" if ratio < 1 else ""
        print(
            f"--image_tokens {args.image_tokens}: {len(tokens)} images, each encoded from its centre "
            f"square; {crops or 'random crop positions (non-square images)'} do not apply"
        )
    return tokens


def _new_vae(args: argparse.Namespace, backend) -> tuple[nn.Module, str]:
    """The VAE a new DALL-E trains on, and where it came from: a ``train_vae.py`` run, or a frozen
    pretrained one (VQGAN or OpenAI's dVAE). ``--taming`` alone downloads DALLE-pytorch's ImageNet VQGAN
    once into the cache (the root rank; the others wait)."""
    taming = args.taming or args.vqgan_model_path is not None or args.vqgan_config_path is not None
    openai = args.openai_enc_path is not None or args.openai_dec_path is not None
    asked = [flag for flag, on in (("--vae_path", args.vae_path is not None), ("--taming", taming),
                                   ("--openai_enc_path", openai)) if on]  # fmt: skip
    if len(asked) > 1:
        raise UserError(f"{' and '.join(asked)} name two VAEs: keep one")
    if taming:
        model, config = args.vqgan_model_path, args.vqgan_config_path
        if model is None and config is None:
            if backend.is_root:
                model, config = fetch(VQGAN_MODEL), fetch(VQGAN_CONFIG)
            backend.barrier()
            model, config = fetch(VQGAN_MODEL), fetch(VQGAN_CONFIG)  # cached by now: every rank's path
        vae = VQGanVAE(model, config)
        return vae, f"pretrained {type(vae).__name__}"
    if openai:
        # OpenAI's dVAE is convolutional: any multiple of 8 px works (256 as trained, smaller for tests)
        vae = OpenAIDiscreteVAE(args.openai_enc_path, args.openai_dec_path, image_size=args.image_size or 256)
        return vae, f"pretrained {type(vae).__name__}"
    if args.vae_path is None:
        raise UserError(
            "train_dalle.py needs --vae_path (a train_vae.py run), --taming with --vqgan_model_path / "
            "--vqgan_config_path, --openai_enc_path / --openai_dec_path, or --dalle_path to start from"
        )
    vae, vae_ckpt = load_vae(args.vae_path)
    return vae, str(vae_ckpt.path)


@cli
def main(argv: list[str] | None = None) -> None:
    args = parse_flags(build_parser(), argv)
    for name in args.attn_types:
        if name not in PATTERNS:
            raise UserError(
                f"--attn_types: unknown attention type {name!r}: choose from {', '.join(PATTERNS)}"
            )
    backend = start_backend(backend_config(args))
    seed_everything(args.seed)
    resume = resume_point(args, backend)
    dalle = tokenizer = ckpt = None
    if resume is not None or args.dalle_path is not None:  # the checkpoint's model, VAE and tokenizer
        dalle, tokenizer, ckpt = load_dalle(resume or args.dalle_path)
        check_tokenizer_flags(tokenizer, args, "train_dalle.py")  # the flags may only confirm it
        built = {
            FLAG_OF_FIELD.get(f.name, f.name): getattr(dalle.hparams, f.name) for f in fields(DALLEConfig)
        }
        refuse_changed_flags(
            args,
            {flag: value for flag, value in built.items() if hasattr(args, flag)},
            f"--resume continues {args.output} with the model it built"
            if resume is not None
            else f"--dalle_path {args.dalle_path} fixes the model (fine-tuning keeps its shape)",
        )
        vae, source = dalle.vae, ckpt.meta.get("vae_source")
    else:
        vae, source = _new_vae(args, backend)
    data = data_config(
        args,
        args.image_text_folder,
        args.image_size or vae.image_size,
        check_size=args.image_tokens is None,  # stored tokens: images are not decoded at this size
    )
    dataset = load_data(data, backend)
    if data.image_size != vae.image_size:
        raise UserError(
            f"--image_size {data.image_size} does not match the VAE's {vae.image_size}: drop --image_size"
        )
    if dalle is None:
        tokenizer = caption_tokenizer(args, dataset, backend)
        try:
            dalle = DALLE(model_config(args, tokenizer.vocab_size), vae=vae)
        except ValueError as e:  # from the config's checks or the modules' (e.g. rotary vs dim_head)
            raise UserError(f"model flags: {e}") from None
    fine_tuning = args.dalle_path is not None and resume is None
    if fine_tuning and args.output is not None and RunDirectory(args.output).holds_a_run():
        raise UserError(
            f"--output {args.output} already holds a run: to continue it use --resume --output "
            f"{args.output} (--dalle_path starts a new run initialised from those weights)"
        )
    check_captions(dataset, tokenizer, dalle.text_seq_len, args.truncate_captions)
    tokens = _image_tokens(args, vae, data, dataset, backend.is_root)
    run, flags = prepare_run(args, "train_dalle", backend, data, text_seq_len=dalle.text_seq_len)
    meta = {"vae_source": source, "data": dataset.describe()}
    if tokens is not None:
        meta["image_tokens"] = {"file": str(tokens.path), "vae_hash": tokens.vae_hash}
    task = DALLETask(
        dalle.to(backend.device),
        tokenizer,
        meta,
        truncate_captions=args.truncate_captions,
        null_cond_prob=args.null_cond_prob,
        tokens=tokens,
    )
    resumed = ckpt if resume is not None else None
    validation = load_validation(args, data, backend)
    final = run_training(task, args, backend, run, flags, dataset, resumed, validation=validation)
    if backend.is_root and final is not None:
        print(f"DALL-E trained: {final}")
    backend.shutdown()
