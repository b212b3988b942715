"""``train_dalle.py``: train DALL-E on the tokens of a trained VAE, from a folder or the built-in dataset."""

from __future__ import annotations

import argparse
import functools
import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..attention import ATTN_IMPLS, PATTERNS
from ..data import image_grid
from ..data.shards import ShardDataset, Skipped
from ..data.token_cache import TokenCache, item_entry, stream_key, vae_hash
from ..download import VQGAN_CONFIG, VQGAN_MODEL, fetch
from ..errors import UserError
from ..models import DALLE
from ..models.pretrained import OpenAIDiscreteVAE, VQGanVAE
from ..text import Tokenizer
from ..text.options import check_matches
from .captions import caption_tokenizer, check_captions
from .checkpoint import RunDirectory, describe_vae, load_dalle, load_vae, resolve_latest
from .config import (
    Parser,
    add_caption_data_flags,
    add_common_flags,
    int_list,
    positive_float,
    positive_int,
    refuse,
    str_list,
    unit_interval,
)
from .job import build_dataset, cli, load_item, prepare_run, run_training, seed_everything, start_backend
from .loop import Task
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
        help="the data's image tokens, encoded once by python -m dalle_dist.data.encode_tokens with this "
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
    m.add_argument("--loss_img_weight", type=float, default=7)
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


class DALLETask(Task):
    kind = "dalle"

    def __init__(
        self,
        dalle: DALLE,
        tokenizer: Tokenizer,
        args: argparse.Namespace,
        meta: dict[str, Any],
        tokens: TokenCache | None = None,
    ) -> None:
        self.model, self.tokenizer, self.args, self.meta = dalle, tokenizer, args, meta
        self.tokens = tokens  # --image_tokens: items carry token ids [n] instead of pixels
        self.sample_text: Tensor | None = None  # the fixed prompts of the sample grids

    def make_item(self, dataset: Dataset, index: int, rng: random.Random) -> tuple[Tensor, Tensor]:
        if self.tokens is None:
            return self.make_sample(*load_item(dataset, index, rng), rng)
        key, captions = item_entry(dataset, index, rng)
        tokens = self.tokens.get(key)
        if tokens is None:  # TokenCache.check found every key at start: the file changed under the run
            raise UserError(
                f"sample {key!r} is not in --image_tokens {self.tokens.path}: rerun encode_tokens"
            )
        return self.make_sample(tokens, captions, rng)

    def make_sample(self, image: Tensor, captions: list[str], rng: random.Random) -> tuple[Tensor, Tensor]:
        caption = rng.choice(captions)
        text = self.tokenizer.tokenize(
            [caption], self.args.text_seq_len, truncate_text=self.args.truncate_captions
        )
        return text[0], image

    def make_stream_sample(
        self, dataset: ShardDataset, url: str, key: str, captions: list[str], rng: random.Random
    ) -> tuple[Tensor, Tensor] | Skipped:
        """A shard sample from its cached tokens (``ShardDataset.make_item_from_key``)."""
        tokens = self.tokens.stream_item(url, key, stream_key(dataset, url, key, rng))
        return tokens if isinstance(tokens, Skipped) else self.make_sample(tokens, captions, rng)

    def collate(self, items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        return torch.stack([t for t, _ in items]), torch.stack([i for _, i in items])

    def loss(
        self, model: nn.Module, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, float]]:
        text, images = batch
        loss, text_loss, image_loss = model(
            text, images, return_loss=True, null_cond_prob=self.args.null_cond_prob, return_loss_parts=True
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


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        dim=args.dim,
        text_seq_len=args.text_seq_len,
        depth=args.depth,
        heads=args.heads,
        dim_head=args.dim_head,
        ff_dropout=args.ff_dropout,
        attn_dropout=args.attn_dropout,
        reversible=args.reversible,
        loss_img_weight=args.loss_img_weight,
        attn_types=tuple(args.attn_types),
        shift_tokens=args.shift_tokens,
        rotary_emb=args.rotary_emb,
        shared_attn_ids=tuple(args.shared_attn_ids) if args.shared_attn_ids else None,
        shared_ff_ids=tuple(args.shared_ff_ids) if args.shared_ff_ids else None,
        share_input_output_emb=args.share_input_output_emb,
        stable=args.stable_softmax,
        attn_impl=args.attn_impl,
        activation_checkpointing=args.activation_checkpointing,
    )


def _image_tokens(args: argparse.Namespace, vae: nn.Module, dataset: Dataset, log: bool) -> TokenCache | None:
    """``--image_tokens``, opened and checked against this run's VAE and data (one line on failure)."""
    if args.image_tokens is None:
        return None
    tokens = TokenCache.load(args.image_tokens)
    tokens.check(vae_hash(describe_vae(vae), vae.state_dict()), args.image_size, dataset)
    ratio = getattr(dataset, "resize_ratio", None)  # folders and shards crop at random; shapes do not
    if log and ratio is not None:
        crops = f"the random crops of --random_resize_crop_lower_ratio {ratio}" if ratio < 1 else ""
        print(
            f"--image_tokens {args.image_tokens}: {len(tokens)} images, each encoded from its centre "
            f"square; {crops or 'random crop positions (non-square images)'} do not apply"
        )
    return tokens


def _pretrained_vae(args: argparse.Namespace, backend) -> nn.Module | None:
    """The frozen pretrained VAE the flags ask for (VQGAN or OpenAI's dVAE), or None. ``--taming`` alone
    downloads DALLE-pytorch's ImageNet VQGAN once into the cache (the root rank; the others wait)."""
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
        return VQGanVAE(model, config)
    if openai:
        # OpenAI's dVAE is convolutional: any multiple of 8 px works (256 as trained, smaller for tests)
        return OpenAIDiscreteVAE(
            args.openai_enc_path, args.openai_dec_path, image_size=args.image_size or 256
        )
    return None


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse(argv)
    for name in args.attn_types:
        if name not in PATTERNS:
            raise UserError(
                f"--attn_types: unknown attention type {name!r}: choose from {', '.join(PATTERNS)}"
            )
    backend = start_backend(args)
    seed_everything(args.seed)
    resume = None
    if args.resume:
        if args.output is None:
            raise UserError("--resume needs --output naming the run directory to continue")
        dalle, tokenizer, ckpt = load_dalle(resolve_latest(args.output))
        resume = ckpt
        args.image_size = args.image_size or dalle.vae.image_size
        args.text_seq_len = dalle.text_seq_len
        source = ckpt.meta.get("vae_source")
    elif args.dalle_path is not None:
        dalle, tokenizer, ckpt = load_dalle(args.dalle_path)
        args.image_size = args.image_size or dalle.vae.image_size
        args.text_seq_len = dalle.text_seq_len
        source = ckpt.meta.get("vae_source")
    else:
        pretrained = _pretrained_vae(args, backend)
        if pretrained is not None:
            vae, source = pretrained, f"pretrained {type(pretrained).__name__}"
        elif args.vae_path is None:
            raise UserError(
                "train_dalle.py needs --vae_path (a train_vae.py run), --taming with --vqgan_model_path / "
                "--vqgan_config_path, --openai_enc_path / --openai_dec_path, or --dalle_path to start from"
            )
        else:
            vae, vae_ckpt = load_vae(args.vae_path)
            source = str(vae_ckpt.path)
        args.image_size = args.image_size or vae.image_size
        dalle = None
    if dalle is not None:  # resumed or fine-tuned: the checkpoint's tokenizer; flags may only confirm it
        try:
            check_matches(
                tokenizer, args.bpe_path, args.hug, args.chinese, args.chinese_vocab, "train_dalle.py"
            )
        except ValueError as e:
            raise UserError(str(e)) from None
    dataset = build_dataset(args, args.image_text_folder, args.image_size or 128, backend)
    vae_size = (dalle.vae if dalle is not None else vae).image_size
    if args.image_size != vae_size:
        raise UserError(
            f"--image_size {args.image_size} does not match the VAE's {vae_size}: drop --image_size"
        )
    if dalle is None:
        tokenizer = caption_tokenizer(args, dataset, backend)
        try:
            dalle = DALLE(vae=vae, num_text_tokens=tokenizer.vocab_size, **_model_kwargs(args))
        except ValueError as e:
            raise UserError(f"model flags: {e}") from None
    fine_tuning = args.dalle_path is not None and not args.resume
    if fine_tuning and args.output is not None and RunDirectory(args.output).holds_a_run():
        raise UserError(
            f"--output {args.output} already holds a run: to continue it use --resume --output "
            f"{args.output} (--dalle_path starts a new run initialised from those weights)"
        )
    check_captions(dataset, tokenizer, args)
    tokens = _image_tokens(args, dalle.vae, dataset, backend.is_root)
    run = prepare_run(args, "train_dalle", backend)
    meta = {"vae_source": source, "data": dataset.describe()}
    if tokens is not None:
        meta["image_tokens"] = {"file": str(tokens.path), "vae_hash": tokens.vae_hash}
    task = DALLETask(dalle.to(backend.device), tokenizer, args, meta, tokens)
    if tokens is not None and isinstance(dataset, ShardDataset):
        dataset.make_item_from_key = functools.partial(task.make_stream_sample, dataset)
    final = run_training(task, args, backend, run, dataset, resume)
    if backend.is_root and final is not None:
        print(f"DALL-E trained: {final}")
    backend.shutdown()
