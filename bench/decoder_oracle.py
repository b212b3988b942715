"""How good is a trained decoder on its own? It decodes the CLIP image embeddings of real pictures of the
built-in shapes (not the prior's guesses) with their captions, and the shapes judge scores the results: the
ceiling the whole DALL-E 2 pipeline can reach with this decoder. It also prints the decoder's error in
predicting the clean picture from one noised at several diffusion steps, which tells which noise levels it
has not learned yet (its blurred predictions at low noise, for instance).

Pictures come from a seed the decoder did not train on (--seed), of pairs it trained on (the held-out pair
is left out); with --held_out, pictures of the held-out pair only (can the decoder draw what it never
saw, given its CLIP embedding?). Accuracy is judged colour and shape; colour alone beside it.

    .venv/bin/python bench/decoder_oracle.py --decoder runs/demo-dalle2/decoder [--images 128]
        [--guidance 1,3] [--steps 50] [--grid oracle.png] [--held_out]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dalle_dist.checkpoint import load_decoder
from dalle_dist.data import image_grid
from dalle_dist.data.synthetic import ShapesDataset, parse_holdout
from dalle_dist.evaluation.shapes_judge import judge_shape, matches

NOISE_STEPS = (300, 500, 700, 800, 900, 950)  # of 1000: SNR 3.7, 0.97, 0.25, 0.10, 0.024, 0.006 (cosine)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decoder", type=Path, required=True, help="a train_decoder.py run or checkpoint")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--guidance", default="1,3", help="classifier-free guidance scales, comma-separated")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--holdout", default="red triangle")
    parser.add_argument("--seed", type=int, default=1, help="the pictures' seed (training used 0)")
    parser.add_argument("--grid", type=Path, default=None, help="write 16 originals over their decodings")
    parser.add_argument("--held_out", action="store_true", help="pictures of the held-out pair only")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    decoder, tokenizer, _ = load_decoder(args.decoder)
    decoder.eval()
    if args.held_out:
        data = ShapesDataset(decoder.image_size, 100 * args.images, args.seed, ())
        held = set(parse_holdout(args.holdout))
        pair = [f"{a.color} {a.shape}" for a in map(data.attributes, range(len(data)))]
        chosen = [i for i, p in enumerate(pair) if p in held][: args.images]
        args.images = len(chosen)
    else:
        data = ShapesDataset(decoder.image_size, args.images, args.seed, args.holdout)
        chosen = list(range(args.images))
    images = torch.stack([data[i][0] for i in chosen])
    attributes = [data.attributes(i) for i in chosen]
    captions = [f"a {a.color} {a.shape}" for a in attributes]
    text = tokenizer.tokenize(captions, decoder.text_seq_len, truncate_text=True)
    embeds = decoder.image_embeddings(images)

    if decoder.autoencoder is not None:  # a latent decoder: its autoencoder's round trip is its ceiling
        results = [judge_shape(image) for image in decoder.autoencoder.decode(decoder.to_unet_space(images))]
        right = sum(matches(r, c) for r, c in zip(results, captions, strict=True)) / args.images
        print(f"autoencoder round trip (the ceiling): judged right {right:.1%}")
    for scale in (float(s) for s in args.guidance.split(",")):
        decoded = torch.cat([
            decoder.sample(embeds[i : i + 64], text[i : i + 64], cond_scale=scale, steps=args.steps,
                           generator=torch.Generator().manual_seed(i))
            for i in range(0, args.images, 64)
        ])  # fmt: skip
        results = [judge_shape(image) for image in decoded]
        right = sum(matches(r, c) for r, c in zip(results, captions, strict=True)) / args.images
        colour = sum(r.color == a.color for r, a in zip(results, attributes, strict=True)) / args.images
        print(
            f"guidance {scale:g}: judged right {right:.1%}, colour right {colour:.1%} ({args.images} images)"
        )
        if args.grid is not None:
            grid = image_grid(torch.cat([images[:16], decoded[:16]]), nrow=16)
            grid.save(args.grid.with_name(f"{args.grid.stem}-guidance{scale:g}{args.grid.suffix}"))

    x0 = decoder.to_unet_space(images)  # pixels in [-1, 1], or a latent decoder's latents
    keep = torch.ones(args.images, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    abar = decoder.diffusion.alphas_cumprod
    errors = []
    for step in (s * decoder.diffusion.timesteps // 1000 for s in NOISE_STEPS):
        noise, t = torch.randn(x0.shape, generator=generator), torch.full((args.images,), step)
        x_t = decoder.diffusion.add_noise(x0, noise, t)
        v = decoder.predict(x_t, t, embeds, text, keep, keep)
        predicted = abar[step].sqrt() * x_t - (1 - abar[step]).sqrt() * v  # x_0 from the v-prediction
        snr = abar[step] / (1 - abar[step])
        errors.append(f"t={step} (SNR {snr:.3g}) {((predicted - x0) ** 2).mean():.4f}")
    print("x0 error (MSE in the space the UNet diffuses) by diffusion step: " + ", ".join(errors))


if __name__ == "__main__":
    main()
