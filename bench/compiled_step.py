"""Eager vs ``--compile`` DALL-E training step on this CPU: what ``train_dalle.py --compile`` does (every
transformer branch compiled in place, ``dalle_dist.training.compile``), timed interleaved against the same
model eager, with the first call's compile time and the MFU against this machine's matmul peak.

Two configurations: the side-by-side benchmark's (bench/compare_dalle_pytorch.py: 128 px -> 256 image
tokens, depth 8, batch 4, full layout) and the demo's (configs/demo_dalle.yaml: 32 px, depth 4, batch 32).
fp32 always; bf16 autocast only where the CPU computes bf16 (AVX512-BF16 or AMX): elsewhere bf16 is
emulated and ~100x slower, so its rows would measure the emulation.

    .venv/bin/python bench/compiled_step.py [--repeats 7] [--only side-by-side|demo]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from compare_dalle_pytorch import interleaved  # (this folder: run as a script)

from dalle_dist.devices import cpu_computes_bf16
from dalle_dist.models import DALLE, DiscreteVAE
from dalle_dist.training.compile import compile_regions
from dalle_dist.training.throughput import dalle_flops_per_sample, matmul_peak

SIDE_BY_SIDE = {  # compare_dalle_pytorch.py's train section at 128 px, full layout
    "vae": {"image_size": 128, "num_tokens": 1024, "codebook_dim": 256, "hidden_dim": 64, "num_layers": 3},
    "dalle": {"dim": 256, "heads": 8, "dim_head": 32, "text_seq_len": 64, "num_text_tokens": 10000,
              "depth": 8, "rotary_emb": True, "shift_tokens": True, "loss_img_weight": 7,
              "attn_types": ("full",)},
    "batch": 4,
}  # fmt: skip
DEMO = {  # configs/demo_vae.yaml + configs/demo_dalle.yaml (as bench/profile_demo_step.py)
    "vae": {"image_size": 32, "num_tokens": 128, "codebook_dim": 64, "num_layers": 2, "hidden_dim": 64,
            "num_resnet_blocks": 1},
    "dalle": {"dim": 256, "num_text_tokens": 1024, "text_seq_len": 16, "depth": 4, "heads": 8,
              "dim_head": 32},
    "batch": 32,
}  # fmt: skip
CONFIGS = {"side-by-side": SIDE_BY_SIDE, "demo": DEMO}


def build(config: dict) -> DALLE:
    torch.manual_seed(0)
    return DALLE(vae=DiscreteVAE(**config["vae"]), **config["dalle"])


def trainer(model: DALLE, batch: tuple[torch.Tensor, torch.Tensor], bf16: bool) -> Callable[[], None]:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    text, image = batch

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = model(text, image, return_loss=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(name: str, config: dict, bf16: bool, repeats: int, peak: float) -> None:
    eager, compiled = build(config), build(config)
    regions = compile_regions(compiled)
    g = torch.Generator().manual_seed(1)
    d = config["dalle"]
    text = torch.randint(1, d["num_text_tokens"], (config["batch"], d["text_seq_len"]), generator=g)
    image = torch.randint(0, config["vae"]["num_tokens"], (config["batch"], eager.image_seq_len), generator=g)
    steps = {"eager": trainer(eager, (text, image), bf16), "compiled": trainer(compiled, (text, image), bf16)}
    start = time.perf_counter()
    steps["compiled"]()  # compiles (forward and backward graphs)
    compile_s = time.perf_counter() - start
    t = interleaved(steps, repeats, warmup=1)
    flops = dalle_flops_per_sample(eager) * config["batch"]
    precision = "bf16" if bf16 else "fp32"
    print(
        f"{name:<13} {precision}  eager {t['eager'] * 1e3:7.1f} ms (MFU {flops / t['eager'] / peak:5.1%})  "
        f"compiled {t['compiled'] * 1e3:7.1f} ms (MFU {flops / t['compiled'] / peak:5.1%})  "
        f"speed-up {t['eager'] / t['compiled']:.2f}x  ({regions} regions, first call {compile_s:.0f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    precisions = [False, True] if cpu_computes_bf16() else [False]
    peaks = {bf16: matmul_peak(torch.device("cpu"), torch.bfloat16 if bf16 else torch.float32, 1.0)
             for bf16 in precisions}  # fmt: skip
    bf16_peak = " (no bf16 arithmetic: no bf16 rows)"
    if True in peaks:
        bf16_peak = f", bf16 {peaks[True] / 1e9:.0f} GFLOP/s"
    print(f"matmul peak: fp32 {peaks[False] / 1e9:.0f} GFLOP/s{bf16_peak}")
    for name, config in CONFIGS.items():
        if args.only in (None, name):
            for bf16 in precisions:
                measure(name, config, bf16, args.repeats, peaks[bf16])


if __name__ == "__main__":
    main()
