"""``train_vae.py``'s flags, and the tables that tie them to the DiscreteVAE config and the quantizers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import (
    Parser,
    fraction,
    int_list,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    refuse,
    str_list,
)
from ..models.quantizers import QUANTIZERS
from .flags import add_common_flags, add_picture_data_flags


def build_parser() -> Parser:
    parser = Parser(prog="train_vae.py", description="Train a discrete VAE (image -> tokens).")
    add_common_flags(parser, "train_vae")
    refuse(parser, "--transparent", "RGBA images are not supported yet: convert them to RGB")
    add_picture_data_flags(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=positive_int, default=8)
    g.add_argument("--learning_rate", type=positive_float, default=1e-3)
    g.add_argument(
        "--lr_decay_rate", type=positive_float, default=0.98, help="learning-rate factor per epoch"
    )
    g.add_argument("--clip_grad_norm", type=positive_float, default=None)
    g.add_argument("--starting_temp", type=positive_float, default=1.0, help="gumbel: first temperature")
    g.add_argument("--temp_min", type=positive_float, default=0.5, help="gumbel: lowest temperature")
    g.add_argument(
        "--anneal_rate",
        type=nonneg_float,
        default=1e-6,
        help="gumbel: temperature = max(start * exp(-rate * step), min)",
    )
    g.add_argument(
        "--num_images_save", type=positive_int, default=4, help="images in each reconstruction grid"
    )
    m = parser.add_argument_group("model")
    m.add_argument("--num_tokens", type=positive_int, default=8192, help="codebook size")
    m.add_argument(
        "--num_layers", type=positive_int, default=3, help="downsamplings (2**n smaller token grid)"
    )
    m.add_argument("--num_resnet_blocks", type=nonneg_int, default=2)
    m.add_argument("--smooth_l1_loss", action="store_true")
    m.add_argument("--emb_dim", type=positive_int, default=512, help="codebook dimension")
    m.add_argument("--hidden_dim", type=positive_int, default=256)
    m.add_argument("--kl_loss_weight", type=nonneg_float, default=0.0, help="gumbel: KL to uniform codes")
    m.add_argument("--straight_through", action="store_true", help="gumbel: hard Gumbel-softmax codes")
    v = parser.add_argument_group("fine-tune a Taming VQGAN (the architecture and codes come from its files)")
    v.add_argument("--vqgan_model_path", type=Path, default=None, help="its Lightning .ckpt (e.g. last.ckpt)")
    v.add_argument("--vqgan_config_path", type=Path, default=None, help="its project .yaml")
    q = parser.add_argument_group("quantizer (models/quantizers.py)")
    q.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="gumbel",
        help="gumbel: DALL-E's Gumbel-softmax dVAE (DALLE-pytorch's); vq: l2-normalised low-dimensional "
        "codes with EMA updates; fsq: finite scalar quantization; lfq: lookup-free quantization",
    )
    q.add_argument(
        "--codebook_dim", type=positive_int, default=16, help="vq: the width codes are compared in (8-32)"
    )
    q.add_argument("--vq_decay", type=fraction, default=0.9, help="vq: EMA decay of the codebook")
    q.add_argument(
        "--dead_code_threshold",
        type=nonneg_float,
        default=0.1,
        help="vq: restart codes whose EMA count (uses a step, averaged) falls under this (0: never)",
    )
    q.add_argument(
        "--no_kmeans_init", action="store_true", help="vq: random codes instead of k-means on the first batch"
    )
    q.add_argument(
        "--commitment_weight",
        type=nonneg_float,
        default=0.25,
        help="vq, lfq: encoder-to-code commitment loss",
    )
    q.add_argument(
        "--fsq_levels",
        type=int_list,
        default=None,
        help="fsq: levels a channel, e.g. 8,5,5,5 (codes: their product; default: the FSQ paper's for "
        "about --num_tokens codes, 8,5,5,5 without it)",
    )
    q.add_argument(
        "--fsq_symmetric",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fsq: levels symmetric about 0 (--no-fsq_symmetric: plain FSQ, with --fsq_noise_dropout 0)",
    )
    q.add_argument(
        "--fsq_noise_dropout",
        type=fraction,
        default=0.0,
        help="fsq: share of training values given uniform noise instead of rounding (needs symmetric levels)",
    )
    q.add_argument(
        "--fsq_entropy_weight",
        type=nonneg_float,
        default=0.0,
        help="fsq: weight of an entropy loss on FSQ's grid (LFQ's, ours): spreads the codes the encoder uses",
    )
    q.add_argument(
        "--fsq_entropy_temperature",
        type=positive_float,
        default=0.5,
        help="fsq: temperature of the soft level probabilities that entropy loss reads (in squared levels)",
    )
    q.add_argument(
        "--lfq_bits", type=positive_int, default=None, help="lfq: bits a code (2**bits codes; default 10)"
    )
    q.add_argument(
        "--entropy_loss_weight",
        type=nonneg_float,
        default=0.15,
        help="lfq: entropy loss weight",
    )
    q.add_argument(
        "--lfq_temperature",
        type=positive_float,
        default=0.3,
        help="lfq: temperature of the code probabilities the entropy loss reads (vector-quantize-pytorch's "
        "0.01 saturates them: a sign bit can stay stuck, half the codes unused)",
    )
    a = parser.add_argument_group("VQGAN's objective (any quantizer)")
    a.add_argument(
        "--gan",
        action="store_true",
        help="train against a PatchGAN discriminator (hinge loss, adaptive weight)",
    )
    a.add_argument(
        "--disc_start", type=nonneg_int, default=1000, help="--gan: the step the adversarial losses start at"
    )
    a.add_argument(
        "--disc_weight",
        type=nonneg_float,
        default=0.8,
        help="--gan: factor on the adaptive adversarial weight",
    )
    a.add_argument(
        "--disc_layers", type=positive_int, default=3, help="--gan: the discriminator's stride-2 layers"
    )
    a.add_argument("--disc_hidden", type=positive_int, default=64, help="--gan: its first layer's channels")
    a.add_argument(
        "--perceptual_weights",
        type=str_list,
        default=None,
        help="add LPIPS to the reconstruction loss, with these weight files (not fetched here): "
        "torchvision's vgg16-397923af.pth and LPIPS' vgg.pth, comma-separated (.pth or .safetensors)",
    )
    a.add_argument(
        "--perceptual_weight", type=nonneg_float, default=1.0, help="--perceptual_weights: factor on LPIPS"
    )
    return parser


# the --gan flags and the keys of a checkpoint's "gan" settings
GAN_FLAGS = {"disc_start": "start", "disc_weight": "weight"}
DISCRIMINATOR_FLAGS = {"disc_layers": "layers", "disc_hidden": "hidden"}


# which quantizers read each quantizer flag (given for another, it is refused rather than ignored); the
# Gumbel dVAE's temperature flags are not refused elsewhere: config files such as demo_vae.yaml set them
FLAG_QUANTIZERS = {
    "codebook_dim": ("vq",),
    "vq_decay": ("vq",),
    "dead_code_threshold": ("vq",),
    "no_kmeans_init": ("vq",),
    "commitment_weight": ("vq", "lfq"),
    "fsq_levels": ("fsq",),
    "fsq_symmetric": ("fsq",),
    "fsq_noise_dropout": ("fsq",),
    "fsq_entropy_weight": ("fsq",),
    "fsq_entropy_temperature": ("fsq",),
    "lfq_bits": ("lfq",),
    "entropy_loss_weight": ("lfq",),
    "lfq_temperature": ("lfq",),
}


# the model flags and the DiscreteVAE config keys they set
FLAG_OF_CONFIG = {
    "image_size": "image_size",
    "num_tokens": "num_tokens",
    "emb_dim": "codebook_dim",
    "num_layers": "num_layers",
    "num_resnet_blocks": "num_resnet_blocks",
    "hidden_dim": "hidden_dim",
    "smooth_l1_loss": "smooth_l1_loss",
    "straight_through": "straight_through",
    "kl_loss_weight": "kl_div_loss_weight",
    "quantizer": "quantizer",
    "codebook_dim": "vq_codebook_dim",
    "vq_decay": "vq_decay",
    "dead_code_threshold": "dead_code_threshold",
    "commitment_weight": "commitment_weight",
    "fsq_levels": "fsq_levels",
    "fsq_symmetric": "fsq_symmetric",
    "fsq_noise_dropout": "fsq_noise_dropout",
    "fsq_entropy_weight": "fsq_entropy_weight",
    "fsq_entropy_temperature": "fsq_entropy_temperature",
    "lfq_bits": "lfq_bits",
    "entropy_loss_weight": "entropy_loss_weight",
    "lfq_temperature": "lfq_temperature",
}
