"""Plan B for DALL-E 2's decoder, probed before it is built: diffusion on an autoencoder's latents instead
of pixels. Trains (for a fixed number of seconds each) our ``Autoencoder`` (diffusers' ``AutoencoderKL``)
on the built-in shapes (32 px -> 8 x 8 x --latent_channels), then our ``Decoder``'s UNet on its
normalised latents with the pixel decoder's conditioning, loss and EMA, on a run's CLIP; then judges the
autoencoder's round trip, the decoder on real pictures' CLIP embeddings (as bench/decoder_oracle.py) and,
with --prior, the demo's prompts end to end (as ``make demo-dalle2`` scores them).

    OMP_NUM_THREADS=2 .venv/bin/python bench/latent_decoder_probe.py --run runs/demo-dalle2 \
        [--autoencoder_seconds 300] [--decoder_seconds 480] [--latent_channels 8] [--grid probe]

This is a measurement, not the feature: its figures are in bench/RESULTS.md ("A latent decoder, measured").
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path

import torch
from torch import Tensor

from dalle_dist.checkpoint import load_clip, load_prior
from dalle_dist.data import image_grid
from dalle_dist.data.synthetic import ShapesDataset
from dalle_dist.evaluation.shapes_judge import judge_shape, matches
from dalle_dist.models.autoencoder import Autoencoder
from dalle_dist.models.decoder import Decoder

PROMPTS = [
    *("a red circle", "a green square", "a blue triangle", "a yellow circle", "a purple square"),
    *("a cyan triangle", "an orange square", "a pink circle", "a red triangle"),
]
HOLDOUT = "red triangle"


def batches(data: ShapesDataset, size: int, seed: int):
    rng = random.Random(seed)
    while True:
        items = [data[rng.randrange(len(data))] for _ in range(size)]
        yield torch.stack([x[0] for x in items]), [rng.choice(x[1]) for x in items]


def train_autoencoder(data: ShapesDataset, channels: int, seconds: float) -> Autoencoder:
    """MSE + 1e-6 KL, AdamW 5e-4 decaying linearly over the time budget, gradients clipped at 1; then the
    latent normalisation fitted on 512 other pictures."""
    ae = Autoencoder(image_size=32, widths=(32, 64, 64), latent_channels=channels)
    opt = torch.optim.AdamW(ae.parameters(), lr=5e-4)
    start, step = time.time(), 0
    for images, _ in batches(data, 32, 0):
        if time.time() - start > seconds:
            break
        loss = ae(images)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = 5e-4 * max(0.05, 1 - (time.time() - start) / seconds)
        opt.step()
        step += 1
    print(
        f"autoencoder: {step} steps ({step * 32} samples) in {time.time() - start:.0f} s, "
        f"loss {loss.item():.4f}"
    )
    ae.eval().requires_grad_(False)
    probe = ShapesDataset(32, 512, 2, HOLDOUT)
    ae.fit_latent_stats(torch.stack([probe[i][0] for i in range(len(probe))]))
    return ae


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def judged(images: Tensor, captions: list[str]) -> float:
    return sum(matches(judge_shape(i), c) for i, c in zip(images, captions, strict=True)) / len(captions)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a make demo-dalle2 run (its clip/, prior/)")
    parser.add_argument("--autoencoder_seconds", type=float, default=300)
    parser.add_argument("--decoder_seconds", type=float, default=480)
    parser.add_argument("--latent_channels", type=int, default=8)
    parser.add_argument("--prior", action="store_true", help="also judge the demo's prompts end to end")
    parser.add_argument("--grid", type=Path, default=None, help="file stem for the pictures")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = ShapesDataset(32, 20000, 0, HOLDOUT)
    ae = train_autoencoder(data, args.latent_channels, args.autoencoder_seconds)
    encode, decode = ae.encode, ae.decode
    clip, tokenizer, _ = load_clip(args.run / "clip")
    clip.eval()

    decoder = Decoder(
        clip,
        image_size=8,
        channels=args.latent_channels,
        dim=64,
        dim_mults=(1, 2),
        attention_resolutions=(8, 4),
        cond_dim=128,
        attention_head_dim=32,
        head_dim_counts_heads=True,  # 32 heads, the layout measured (diffusers counted heads by that name)
        num_image_tokens=4,
    )
    ema = copy.deepcopy(decoder).requires_grad_(False)
    trained = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-3, weight_decay=0.0)
    start, step = time.time(), 0
    for images, captions in batches(data, 32, 0):
        if time.time() - start > args.decoder_seconds:
            break
        text = tokenizer.tokenize(captions, clip.text_seq_len, truncate_text=True)
        with torch.no_grad():
            embeds, x0 = clip.embed_image(images), encode(images)
        noise, t, u = decoder.diffusion.training_draws(x0, 2)
        keep_image, keep_text = u[:, 0] >= 0.1, u[:, 1] >= 0.5
        pred = decoder.predict(
            decoder.diffusion.add_noise(x0, noise, t), t, embeds, text, keep_image, keep_text
        )
        loss = decoder.diffusion.loss(pred, x0, noise, t, decoder.min_snr_gamma)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            for averaged, live in zip(ema.parameters(), decoder.parameters(), strict=True):
                averaged.lerp_(live, 1 - 0.995)
    print(f"latent decoder: {step} steps ({step * 32} samples) in {time.time() - start:.0f} s")

    ema.eval()
    torch.set_grad_enabled(False)
    test = ShapesDataset(32, 128, 1, HOLDOUT)
    images = torch.stack([test[i][0] for i in range(len(test))])
    captions = [f"a {test.attributes(i).color} {test.attributes(i).shape}" for i in range(len(test))]
    print(f"autoencoder round trip judged right {judged(decode(encode(images)), captions):.1%}")
    text = tokenizer.tokenize(captions, clip.text_seq_len, truncate_text=True)
    for scale in (1.0, 3.0):
        decoded = decode(ema.denoise(clip.embed_image(images), text, cond_scale=scale, generator=seeded(0)))
        print(f"oracle, guidance {scale:g}: judged right {judged(decoded, captions):.1%}")
        if args.grid:
            image_grid(torch.cat([images[:16], decoded[:16]]), nrow=16).save(
                f"{args.grid}-oracle-g{scale:g}.png"
            )
    if not args.prior:
        return
    prior, _, _ = load_prior(args.run / "prior")
    prior.eval()
    right = {}
    for k, prompt in enumerate(PROMPTS):
        text = tokenizer.tokenize([prompt] * 16, clip.text_seq_len, truncate_text=True)
        embeds = prior.sample(text, cond_scale=3.0, steps=64, generator=seeded(k))
        right[prompt] = judged(
            decode(ema.denoise(embeds, text, cond_scale=3.0, generator=seeded(100 + k))), [prompt] * 16
        )
        print(f"  {prompt!r}: {right[prompt]:.0%}")
    seen = [v for p, v in right.items() if not p.endswith(HOLDOUT)]
    print(f"end to end: trained pairs {sum(seen) / len(seen):.1%}, held out {right['a ' + HOLDOUT]:.1%}")


if __name__ == "__main__":
    main()
