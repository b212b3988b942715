"""``generate.py``: images (and optionally captions) from a trained DALL-E checkpoint, or from a DALL-E 2
prior and decoder (``--prior_path`` + ``--decoder_path``).

Layout, as DALLE-pytorch writes it: ``{outputs_dir}/{prompt, spaces -> underscores, <= 100 chars}/``
holding ``0.png``, ``1.png``, ..., ``caption.txt`` and ``grid.png``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_dalle, load_decoder, load_prior
from .cli import (
    Parser,
    add_device_flag,
    add_tokenizer_flags,
    check_tokenizer_flags,
    cli,
    nonneg_float,
    output_folder,
    positive_float,
    positive_int,
    refuse,
    top_k,
    unit_interval,
)
from .data import image_grid, label_image, load_image
from .devices import cpu_computes_bf16, pick_device
from .errors import UserError
from .evaluation.clip_score import clip_scores, load_scoring_clip
from .text import CaptionTooLongError


def build_parser() -> Parser:
    parser = Parser(prog="generate.py", description="Generate images from a trained DALL-E (or DALL-E 2).")
    parser.add_argument(
        "--dalle_path", type=Path, default=None, help="train_dalle.py run directory or checkpoint"
    )
    two = parser.add_argument_group("DALL-E 2 (instead of --dalle_path)")
    two.add_argument("--prior_path", type=Path, default=None, help="train_prior.py run or checkpoint")
    two.add_argument("--decoder_path", type=Path, default=None, help="train_decoder.py run or checkpoint")
    two.add_argument("--steps", type=positive_int, default=50, help="the decoder's sampler steps")
    two.add_argument("--prior_steps", type=positive_int, default=64, help="the prior's sampler steps")
    two.add_argument(
        "--sampler", choices=("ddim", "dpm", "ddpm"), default="ddim", help="ddim, DPM-Solver++, ddpm"
    )
    two.add_argument(
        "--prior_cond_scale",
        type=nonneg_float,
        default=None,
        help="the prior's own classifier-free guidance scale (default --cf_guidance_scale), to guide the "
        "two parts differently",
    )
    parser.add_argument("--text", type=str, default=None, help="prompt; '|' separates several prompts")
    refuse(parser, "--taming", "a DALL-E checkpoint here carries its own VAE: --dalle_path is enough")
    for flag in ("--vqgan_model_path", "--vqgan_config_path"):
        refuse(parser, flag, "a DALL-E checkpoint here carries its own VAE: --dalle_path is enough", True)
    parser.add_argument("--num_images", type=positive_int, default=16, help="images per prompt")
    rank = parser.add_argument_group("ranking with CLIP (minDALL-E style)")
    rank.add_argument(
        "--num_candidates",
        type=positive_int,
        default=None,
        help="images sampled per prompt (default --num_images)",
    )
    rank.add_argument(
        "--keep", type=positive_int, default=None, help="the best K candidates kept (default --num_images)"
    )
    rank.add_argument(
        "--clip_path",
        type=Path,
        default=None,
        help="the CLIP that ranks the candidates: a train_clip.py run or checkpoint, or a Hugging Face CLIP "
        "(hf:openai/clip-vit-base-patch32, or hf:DIR for a save_pretrained folder)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=4)
    parser.add_argument(
        "--top_k",
        type=top_k,
        default=0.9,
        help="below 1, a filter threshold: keep the top (1 - top_k) share of tokens (DALLE-pytorch's "
        "meaning); a whole number from 1 up keeps that many tokens (minDALL-E's, e.g. 256)",
    )
    parser.add_argument("--top_p", type=unit_interval, default=1.0, help="nucleus sampling; 1 = off")
    parser.add_argument("--temperature", type=positive_float, default=1.0)
    parser.add_argument(
        "--cond_scale",
        "--cf_guidance_scale",
        type=nonneg_float,
        default=1.0,
        help="classifier-free guidance scale; 1 = off (DALL-E 2: the decoder's, and the prior's unless "
        "--prior_cond_scale)",
    )
    parser.add_argument("--img", type=Path, default=None, help="image whose top rows prime the samples")
    parser.add_argument("--num_init_img_tokens", type=positive_int, default=None)
    parser.add_argument("--outputs_dir", type=output_folder, default=Path("outputs"))
    parser.add_argument(
        "--gentxt", "--gentext", action="store_true", help="let the model complete the prompt text first"
    )
    parser.add_argument("--truncate_captions", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    # the checkpoint carries its tokenizer; these are accepted, and checked, so DALLE-pytorch commands work
    tok = parser.add_argument_group("tokenizer (not needed: must match the checkpoint's when given)")
    add_tokenizer_flags(tok, trained=True)
    add_device_flag(parser)
    parser.add_argument("--no_cache", action="store_true", help="recompute every step (slow; for checking)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the cached decode step through torch.compile: the first batch pays the compilation "
        "(tens of seconds on a CPU), later ones run faster (bench/RESULTS.md)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="sample in bf16: a DALL-E's transformer weights and cache in bf16 (decoding reads every weight "
        "and cached key per token: half the bytes; the VAE decodes in fp32); a DALL-E 2's prior and "
        "decoder under bf16 autocast (weights stay fp32)",
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="--bf16 where this device computes bf16 (a GPU with bf16, a CPU with AVX512-BF16 or AMX), fp32 "
        "elsewhere (CPUs that emulate bf16 run it many times slower)",
    )
    return parser


def prompt_folder(outputs_dir: Path, prompt: str) -> Path:
    """DALLE-pytorch's folder name: spaces become underscores, cut at 100 characters."""
    name = re.sub(r"[/\\\0]", "_", prompt.replace(" ", "_"))[:100] or "_"
    return outputs_dir / name


# DALL-E 1's sampling flags: with a prior and decoder they would be ignored, so they are refused
DALLE1_ONLY = (
    "gentxt",
    "img",
    "num_init_img_tokens",
    "top_k",
    "top_p",
    "temperature",
    "no_cache",
    "compile",
)
# DALL-E 2's sampling flags, refused with --dalle_path for the same reason
DALLE2_ONLY = ("steps", "prior_steps", "sampler", "prior_cond_scale")


def refuse_given(args: Any, names: tuple[str, ...], why: str) -> None:
    """One ``UserError`` line naming every flag of ``names`` the user gave, and ``why`` it does not apply."""
    given = [f"--{name}" for name in names if args.given(name)]
    if given:
        raise UserError(f"{', '.join(given)}: {why}")


@dataclass
class Model:
    """What the prompt loop needs of either generation: the tokenizer, the caption length, a line to
    print, and ``images(text [1, L], n)`` -> n images [n, C, S, S] in [0, 1] (on the CPU)."""

    tokenizer: Any
    text_seq_len: int
    loaded: str
    images: Callable[[torch.Tensor, int], torch.Tensor]
    dalle: Any = None  # DALL-E 1 (its --gentxt)


def _dalle1(args: Any, device: torch.device, bf16: bool) -> Model:
    refuse_given(args, DALLE2_ONLY, "DALL-E 2 sampling flags; a DALL-E (--dalle_path) takes --top_k, "
                 "--top_p, --temperature and --cond_scale")  # fmt: skip
    if args.compile and args.no_cache:
        raise UserError("--compile compiles the cached decode step: drop --no_cache (or --compile)")
    dalle, tokenizer, ckpt = load_dalle(args.dalle_path)
    dalle.to(device).eval()
    if bf16:
        dalle.to(torch.bfloat16).vae.float()
    prime = None
    if args.img is not None:
        if not args.img.is_file():
            raise UserError(f"--img {args.img} does not exist")
        prime = load_image(args.img, dalle.vae.image_size)[None].to(device)
    if args.num_init_img_tokens is not None and args.num_init_img_tokens >= dalle.image_seq_len:
        raise UserError(
            f"--num_init_img_tokens must be below {dalle.image_seq_len} (the image's token count)"
        )
    to_pixels = getattr(dalle.vae, "denormalize", lambda x: x)

    def images(text: torch.Tensor, n: int) -> torch.Tensor:
        out = dalle.generate_images(
            text.expand(n, -1),
            filter_thres=args.top_k,
            top_p=args.top_p,
            temperature=args.temperature,
            cond_scale=args.cond_scale,
            img=prime.expand(n, -1, -1, -1) if prime is not None else None,
            num_init_img_tokens=args.num_init_img_tokens,
            use_cache=not args.no_cache,
            compile=args.compile,
        )
        return to_pixels(out).clamp(0, 1).cpu()

    return Model(tokenizer, dalle.text_seq_len, f"loaded {ckpt.path} (step {ckpt.step})", images, dalle)


def _dalle2(args: Any, device: torch.device, bf16: bool) -> Model:
    from .models import DALLE2

    if args.prior_path is None or args.decoder_path is None:
        raise UserError(
            "DALL-E 2 needs both --prior_path and --decoder_path (train_prior.py, train_decoder.py)"
        )
    refuse_given(args, DALLE1_ONLY, "DALL-E 1 sampling flags; a prior and decoder take --steps, "
                 "--prior_steps, --sampler and --cf_guidance_scale")  # fmt: skip
    prior, tokenizer, prior_ckpt = load_prior(args.prior_path)
    decoder, _, decoder_ckpt = load_decoder(args.decoder_path)
    if prior_ckpt.meta.get("clip_source") != decoder_ckpt.meta.get("clip_source"):
        print(
            f"note: the prior was trained on {prior_ckpt.meta.get('clip_source')}, the decoder on "
            f"{decoder_ckpt.meta.get('clip_source')}: their CLIPs should be the same"
        )
    try:
        dalle2 = DALLE2(prior.clip, prior, decoder, tokenizer=tokenizer).to(device).val_mode()
    except ValueError as e:
        raise UserError(f"--prior_path / --decoder_path: {e}") from None

    def images(text: torch.Tensor, n: int) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = dalle2(
                text=text.expand(n, -1),
                cf_guidance_scale=args.cond_scale,
                prior_cond_scale=args.prior_cond_scale,
                steps=args.steps,
                prior_steps=args.prior_steps,
                sampler=args.sampler,
            )
        return out.float().clamp(0, 1).cpu()

    loaded = (
        f"loaded {prior_ckpt.path} (step {prior_ckpt.step}) and {decoder_ckpt.path} "
        f"(step {decoder_ckpt.step})"
    )
    return Model(tokenizer, prior.text_seq_len, loaded, images)


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse(argv)
    two = args.prior_path is not None or args.decoder_path is not None
    if two and args.dalle_path is not None:
        raise UserError("--dalle_path names a DALL-E, --prior_path / --decoder_path a DALL-E 2: keep one")
    if not two and args.dalle_path is None:
        raise UserError("give --dalle_path (a train_dalle.py run), or --prior_path and --decoder_path")
    if args.text is None and not args.gentxt:
        raise UserError("give --text 'a prompt' (or --gentxt to let the model write one)")
    if args.text is not None and not args.gentxt and not all(p.strip() for p in args.text.split("|")):
        raise UserError(
            f"--text {args.text!r} holds an empty prompt: write one, e.g. --text 'a red square' ('|' "
            "separates several), or add --gentxt to let the model write the text"
        )
    device = pick_device(args.device)
    bf16 = args.bf16
    if args.amp and not bf16:
        bf16 = cpu_computes_bf16() if device.type == "cpu" else torch.cuda.is_bf16_supported()
    elif bf16 and device.type == "cpu" and not cpu_computes_bf16():
        print(
            "--bf16: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX) and emulates it, several times "
            "slower than fp32: drop --bf16 unless bf16 is the point",
            flush=True,
        )
    model = _dalle2(args, device, bf16) if two else _dalle1(args, device, bf16)
    tokenizer = model.tokenizer
    check_tokenizer_flags(tokenizer, args, "generate.py")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    candidates, keep = args.num_candidates or args.num_images, args.keep or args.num_images
    ranker = None
    if args.clip_path is not None:
        ranker = load_scoring_clip(args.clip_path)[:2]
        ranker[0].to(device).eval()
        keep = min(keep, candidates)
    elif args.num_candidates is not None or args.keep is not None:
        raise UserError("--num_candidates / --keep choose among samples with a CLIP: add --clip_path RUN")
    prompts = [p.strip() for p in (args.text or "").split("|")] if args.text else [""]
    print(model.loaded)
    for prompt in prompts:
        if args.gentxt:
            # condition on the sampled tokens themselves: decoding and re-encoding need not round-trip
            text, texts = model.dalle.generate_texts(
                tokenizer, prompt or None, filter_thres=args.top_k, compile=args.compile
            )
            prompt = texts[0]
            print(f"generated text: {prompt}")
        else:
            try:
                text = tokenizer.tokenize([prompt], model.text_seq_len, truncate_text=args.truncate_captions)
            except CaptionTooLongError as e:
                raise UserError(str(e)) from None
        text = text.to(device)
        images = torch.cat(
            [
                model.images(text, min(args.batch_size, candidates - start))
                for start in range(0, candidates, args.batch_size)
            ]
        )
        label, scores = prompt, None
        if ranker is not None:  # best first: 0.png is the one CLIP matches best with the prompt
            clip, clip_tokenizer = ranker
            scores = clip_scores(clip, clip_tokenizer, images, [prompt] * len(images), device=device).cpu()
            order = scores.argsort(descending=True)[:keep]
            images, scores = images[order], scores[order]
            label = (
                f"{prompt} (CLIP-ranked best {keep} of {candidates}: "
                + ", ".join(f"{s:.2f}" for s in scores.tolist())
                + ")"
            )
        folder = prompt_folder(args.outputs_dir, prompt)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image_grid(image[None], nrow=1, padding=0).save(folder / f"{i}.png")
        (folder / "caption.txt").write_text(prompt + "\n", encoding="utf-8")
        if scores is not None:
            ranked = [{"file": f"{i}.png", "clip_score": float(s)} for i, s in enumerate(scores)]
            record = {
                "prompt": prompt,
                "candidates": candidates,
                "clip_path": str(args.clip_path),
                "images": ranked,
            }
            (folder / "scores.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        label_image(image_grid(images), label).save(folder / "grid.png")
        print(f"{len(images)} images for {prompt!r} in {folder}/ (grid: {folder / 'grid.png'})")
