"""The GPU checks of the attention-kernel issue (an earlier batch's [5/8]) and of issue [4/6], for a
session that is lent a CUDA machine (they cannot run on a CPU).

1. FlexAttention (compiled to Triton) for every pattern, forward and backward, against the dense fp64
   reference: the largest absolute error of the output and of dq / dk / dv.
2. One attention call (forward + backward, bf16) per pattern at 32 x 32 and 64 x 64 image grids with the
   FlexAttention block mask, the dense-mask SDPA and plain causal SDPA: milliseconds (CUDA events).
3. Training MFU: DALLE dim 1024, depth 12, 16 heads x 64, text 256 + 32 x 32 image tokens (1280 positions),
   bf16 autocast, batch 8, Adam; FLOPs per sample from ``dalle_flops_per_sample`` over the bf16 matmul peak
   measured by ``matmul_peak`` (target >= 40 % on an H100).
4. minDALL-E 1.3B as converted (issue [4/6], random weights): a fine-tuning step (bf16 autocast, AdamW) in
   samples/s, MFU and peak memory, and bf16 cached decoding of minDALL-E's 96 candidates in image tokens/s.
5. ``compile`` (issue [6/6]): the MFU of 3. with every transformer branch compiled (what ``--compile``
   does) beside eager, and the first compiled call's seconds.
6. ``engines`` (issue [6/6]): train_dalle.py at 3.'s size for 30 steps on the built-in dataset under each
   engine on one GPU — DDP, FSDP2 (torchrun), DeepSpeed ZeRO-2 and ZeRO-3 (its launcher) — with --bf16:
   samples/s over steps 11-30 and peak GPU memory, from each run's metrics.jsonl. On one GPU nothing is
   partitioned: this measures each engine's own overhead; memory savings need N GPUs.

    .venv/bin/python bench/gpu_checks.py [--only flex timing mfu mindalle compile engines] [--batch 8]

Prints the device name with every figure; record them in bench/RESULTS.md with the command and date.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dalle_dist.attention import AttentionPlan, SequenceLayout, flex_plan, make_pattern, reference_attention
from dalle_dist.attention.kernels import attention
from dalle_dist.convert.mindalle import DEFAULTS, build_model
from dalle_dist.models import DALLE, DiscreteVAE
from dalle_dist.models.sampling import sample_sequence
from dalle_dist.training.compile import compile_regions
from dalle_dist.training.throughput import dalle_flops_per_sample, matmul_peak

PATTERNS = [("axial_row", {}), ("axial_col", {}), ("conv_like", {}), ("sparse", {})]


def cuda_ms(fn, repeats: int = 10) -> float:
    """Median milliseconds of ``fn`` on the GPU after 3 warm-up calls (the first compiles)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_flex(device: torch.device) -> None:
    print("FlexAttention vs dense fp64 reference (fp32 inputs, 64 text + 16 x 16 grid, training length)")
    layout = SequenceLayout(64, 16)
    n = layout.total_len - 1
    for name, options in [*PATTERNS, ("conv_like", {"kernel_size": 3, "dilation": 2})]:
        pattern = make_pattern(name, layout, options)
        mask = pattern.dense_mask(n, device=device)
        spec = AttentionPlan(mask=mask, flex=flex_plan(pattern, n, device))
        q, k, v = (torch.randn(2, 4, n, 64, device=device, requires_grad=True) for _ in range(3))
        out = attention(q, k, v, spec)
        ref = reference_attention(q.double(), k.double(), v.double(), mask)
        grad = torch.randn_like(out)
        ours = torch.autograd.grad(out, (q, k, v), grad)
        theirs = torch.autograd.grad(ref, (q, k, v), grad.double(), allow_unused=True)
        errors = [float((out.double() - ref).abs().max())]
        errors += [float((a.double() - b).abs().max()) for a, b in zip(ours, theirs, strict=True)]
        print(f"  {name:>10} {options!s:<34} max |error| out {errors[0]:.1e} dq {errors[1]:.1e} "
              f"dk {errors[2]:.1e} dv {errors[3]:.1e}")  # fmt: skip


def time_patterns(device: torch.device) -> None:
    name_ = torch.cuda.get_device_name(device)
    print(f"attention forward + backward, bf16, batch 4, 16 heads x 64, {name_}: ms")
    header = ("grid", "tokens", "pattern", "causal", "dense", "flex", "flex x dense")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 6, 10, 8, 8, 8, 13), strict=True)))
    for fmap in (32, 64):
        layout = SequenceLayout(256, fmap)
        n = layout.total_len - 1
        qkv = [
            torch.randn(4, 16, n, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
            for _ in range(3)
        ]

        def step(spec: AttentionPlan, qkv=qkv) -> None:
            attention(*qkv, spec).sum().backward()

        causal = cuda_ms(lambda: step(AttentionPlan(causal=True)))
        for name, options in PATTERNS:
            pattern = make_pattern(name, layout, options)
            mask = pattern.dense_mask(n, device=device)
            dense = cuda_ms(lambda mask=mask: step(AttentionPlan(mask=mask)))
            flex_spec = AttentionPlan(mask=mask, flex=flex_plan(pattern, n, device))
            flex = cuda_ms(lambda spec=flex_spec: step(spec))
            times = f"{causal:>8.2f} {dense:>8.2f} {flex:>8.2f} {flex / dense:>13.2f}"
            print(f"{fmap:>4}^2 {n:>6} {name:>10} {times}")


def training_mfu(device: torch.device, batch: int, compiled: bool = False) -> None:
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=256, num_layers=3, num_tokens=8192, codebook_dim=512, hidden_dim=64)
    layers = ("full", "axial_row", "axial_col", "conv_like")
    dalle = DALLE(dim=1024, vae=vae, num_text_tokens=10000, text_seq_len=256, depth=12, heads=16,
                  dim_head=64, attn_types=layers).to(device)  # fmt: skip
    optimizer = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad], lr=1e-4)
    text = torch.randint(1, 10000, (batch, 256), device=device)
    image = torch.randint(0, 8192, (batch, dalle.image_seq_len), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = dalle(text, image, return_loss=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    label = "eager"
    if compiled:
        compile_regions(dalle)
        start = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        label = f"--compile (first call {time.perf_counter() - start:.0f} s)"
    ms = cuda_ms(step, repeats=10)
    flops = dalle_flops_per_sample(dalle) * batch
    peak = matmul_peak(device, torch.bfloat16, seconds=1.0)
    print(f"training step {label}, dim 1024 depth 12, {dalle.total_seq_len} positions, batch {batch}, bf16 "
          f"autocast, {torch.cuda.get_device_name(device)}: {ms:.1f} ms, {flops / ms / 1e9:.1f} TFLOP/s, "
          f"bf16 matmul peak {peak / 1e12:.1f} TFLOP/s, MFU {flops / (ms / 1e3) / peak:.1%}")  # fmt: skip
    executors = ["flex" if spec.flex else "sdpa" for spec in dalle.planner.plans(device)[: len(layers)]]
    print(f"  executors per layer type {dict(zip(layers, executors, strict=True))}")


# train_dalle.py at training_mfu's size, on the built-in dataset at 256 px
ENGINE_MODEL = ["--dim", "1024", "--depth", "12", "--heads", "16", "--dim_head", "64",
                "--text_seq_len", "256", "--attn_types", "full,axial_row,axial_col,conv_like", "--bf16",
                "--log_every", "10", "--sample_every", "100000", "--save_every_n_steps", "100000",
                "--max_steps", "30"]  # fmt: skip
ENGINES = {
    "ddp": ["torchrun", []],
    "fsdp": ["torchrun", ["--distributed_backend", "fsdp"]],
    "deepspeed ZeRO-2": ["deepspeed", ["--deepspeed", "--zero_stage", "2"]],
    "deepspeed ZeRO-3": ["deepspeed", ["--deepspeed", "--zero_stage", "3"]],
}


def engine_runs(batch: int, vae_flags: list[str], model: list[str] = ENGINE_MODEL) -> None:
    """Each engine's train_dalle.py run on one device: samples/s after step 10 and peak device memory."""
    root, bin_dir = Path(__file__).resolve().parents[1], Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="dalle_dist-engines-"))
    vae = work / "vae"
    subprocess.run([sys.executable, root / "train_vae.py", *vae_flags, "--max_steps", "1", "--output", vae],
                   check=True, capture_output=True, cwd=root)  # fmt: skip
    for name, (launcher, flags) in ENGINES.items():
        out = work / name.replace(" ", "-")
        start = (
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29931"]
            if launcher == "torchrun"
            else [bin_dir / "deepspeed", "--num_gpus", "1", "--master_port", "29932"]
        )
        cmd = [*start, root / "train_dalle.py", "--vae_path", vae, "--batch_size", str(batch), *model, *flags,
               "--output", out]  # fmt: skip
        proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=root)
        if proc.returncode != 0:
            print(f"{name}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates = [r["samples_per_s"] for r in records if "samples_per_s" in r and r["step"] > 10]
        memory = max((r.get("gpu_mem_gb", r.get("cpu_mem_gb", 0.0)) for r in records), default=0.0)
        print(f"{name:<18} {statistics.mean(rates):8.2f} samples/s   peak memory {memory:6.2f} GiB")
    shutil.rmtree(work, ignore_errors=True)


def mindalle_check(device: torch.device, batch: int, candidates: int = 96, config: dict = DEFAULTS) -> None:
    torch.manual_seed(0)
    dalle = build_model(config).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    params = [p for p in dalle.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    text = torch.randint(1, dalle.num_text_tokens, (batch, dalle.text_seq_len), device=device)
    image = torch.randint(0, dalle.num_image_tokens, (batch, dalle.image_seq_len), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = dalle(text, image, return_loss=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        ms = cuda_ms(step, repeats=5)
        peak_mem = torch.cuda.max_memory_allocated(device) / 1024**3
        flops = dalle_flops_per_sample(dalle) * batch
        mfu = flops / (ms / 1e3) / matmul_peak(device, torch.bfloat16, seconds=1.0)
        print(f"minDALL-E {sum(p.numel() for p in params):,} parameters, fine-tuning step, batch {batch}, "
              f"bf16 autocast, AdamW, {name}: {ms:.0f} ms, {batch / ms * 1e3:.2f} samples/s, MFU {mfu:.1%}, "
              f"peak memory {peak_mem:.1f} GiB")  # fmt: skip
    else:  # a smoke run of the code path
        step()
    optimizer.state.clear()  # Adam's moments are not needed to decode
    dalle.to(torch.bfloat16).vae.float()
    dalle.eval()
    prompt = torch.randint(1, dalle.num_text_tokens, (candidates, dalle.text_seq_len), device=device)
    ids = dalle.text_ids(prompt)

    def decode(n: int) -> None:
        with torch.no_grad():
            sample_sequence(dalle, ids, ids.shape[1] + n, filter_thres=256, temperature=1.0)

    if device.type == "cuda":
        rate = candidates * 64 / ((cuda_ms(lambda: decode(72), 3) - cuda_ms(lambda: decode(8), 3)) / 1e3)
        seconds = dalle.image_seq_len * candidates / rate
        print(f"  bf16 cached decoding, {candidates} candidates, top-k 256, {name}: {rate:.0f} image "
              f"tokens/s ({seconds:.1f} s for {candidates} images' tokens)")  # fmt: skip
    else:
        decode(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("flex", "timing", "mfu", "mindalle", "compile", "engines"),
        default=("flex", "timing", "mfu", "mindalle", "compile", "engines"),
    )
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_checks.py needs a CUDA GPU (none is visible)")
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    if "flex" in args.only:
        check_flex(device)
    if "timing" in args.only:
        time_patterns(device)
    if "mfu" in args.only:
        training_mfu(device, args.batch)
    if "mindalle" in args.only:
        mindalle_check(device, args.batch)
    if "compile" in args.only:
        training_mfu(device, args.batch, compiled=True)
    if "engines" in args.only:
        vae = ["--image_size", "256", "--num_layers", "3", "--num_tokens", "8192", "--emb_dim", "512",
               "--hidden_dim", "64", "--batch_size", "2", "--dataset_size", "64"]  # fmt: skip
        engine_runs(args.batch, vae)


if __name__ == "__main__":
    main()
