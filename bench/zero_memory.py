"""On paper: bytes each rank communicates per optimizer step, and per-GPU memory for model state, by
backend and ZeRO stage, for DALL-E sizes a user might train. Parameter counts come from the model code
(built on the meta device: nothing is allocated); the formulas are the ZeRO paper's (Rajbhandari et al.,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020, sections 5 and 7).

    .venv/bin/python bench/zero_memory.py [--gpus 8]
    .venv/bin/python bench/zero_memory.py --measure [--dim 512 --depth 12]

``--measure`` runs the real thing on this machine instead: train_dalle.py for a few steps, 2 ranks, under
DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 (and one process for the baseline), fp32, batch 1 per rank, and prints
each rank's peak resident memory (sampled every 50 ms) with its difference from DDP: what sharding saves
per rank, activations and the runtime being the same in every row.

Per parameter, mixed-precision Adam keeps 2 bytes of bf16/fp16 weights, 2 of gradients and K = 12 of
optimizer state (fp32 master weights, Adam's m and v). Plain fp32 training keeps 4 + 4 + 8: the same 16.
Activations come on top and depend on batch size, sequence length and checkpointing/reversibility.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dalle_dist.convert.mindalle import build_model
from dalle_dist.models import DALLE, DiscreteVAE

SIZES = [(512, 12), (512, 32), (1024, 12), (1024, 32), (1024, 64)]
GiB = 1024**3


def trainable_parameters(dim: int, depth: int) -> int:
    """DALLE's trainable parameters (the VAE is frozen) at 256 px, 1024 image tokens, 256 text tokens."""
    with torch.device("meta"):
        vae = DiscreteVAE(image_size=256, num_tokens=8192, codebook_dim=512, num_layers=3, hidden_dim=64)
        dalle = DALLE(
            dim=dim,
            vae=vae,
            num_text_tokens=10000,
            text_seq_len=256,
            depth=depth,
            heads=dim // 64,
            dim_head=64,
            attn_types=("full", "axial_row", "axial_col", "conv_like"),
        )
    return sum(p.numel() for p in dalle.parameters() if p.requires_grad)


def mindalle_parameters() -> int:
    """Trainable parameters of minDALL-E 1.3B as the converter builds it (its published config, our DALLE
    with the plain GPT layout on its VQGAN): the model ``python -m dalle_dist.convert 1.3B`` writes."""
    with torch.device("meta"):
        dalle = build_model()
    return sum(p.numel() for p in dalle.parameters() if p.requires_grad)


def communication(psi: int, grad_bytes: int) -> dict[str, float]:
    """Bytes one rank sends per step (ring collectives, large N: an all-reduce moves 2x the data, a
    reduce-scatter or all-gather 1x)."""
    return {
        "ddp / horovod / ZeRO-0 (all-reduce grads)": 2 * psi * grad_bytes,
        "ZeRO-1 / ZeRO-2 (reduce-scatter grads + all-gather weights)": 2 * psi * grad_bytes,
        "ZeRO-3 (+ weights gathered again for backward)": 3 * psi * grad_bytes,
    }


def memory(psi: int, n: int, k: int = 12) -> dict[str, float]:
    """Model-state bytes per GPU (ZeRO paper, mixed precision: 2 + 2 + K bytes per parameter)."""
    return {
        "ddp / horovod / ZeRO-0": (2 + 2 + k) * psi,
        "ZeRO-1 (optimizer state partitioned)": (2 + 2) * psi + k * psi / n,
        "ZeRO-2 (+ gradients partitioned)": 2 * psi + (2 + k) * psi / n,
        "ZeRO-3 (+ weights partitioned)": (2 + 2 + k) * psi / n,
    }


def measure(dim: int, depth: int, steps: int) -> None:
    """Peak resident memory per rank of real 2-rank runs, by backend (see the module's docstring)."""
    root = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    work = Path(tempfile.mkdtemp(prefix="dalle_dist-zero-memory-"))
    vae = work / "vae"
    vae_flags = ["--image_size", "128", "--num_layers", "3", "--num_tokens", "1024", "--hidden_dim", "32"]
    subprocess.run(
        [sys.executable, root / "train_vae.py", *vae_flags, "--max_steps", "1", "--batch_size", "2",
         "--dataset_size", "16", "--output", vae],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    never = "100000"
    common = ["--vae_path", vae, "--dim", str(dim), "--depth", str(depth), "--heads", str(dim // 64),
              "--dim_head", "64", "--text_seq_len", "64", "--batch_size", "1", "--dataset_size", "16",
              "--max_steps", str(steps), "--log_every", "1", "--sample_every", never,
              "--save_every_n_steps", never, "--bpe_vocab_size", "1000"]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    runs = {"one process (no sharding)": ([sys.executable], [])}
    runs["ddp, 2 ranks"] = ([*torchrun, "--master_port=29831"], [])
    runs["fsdp, 2 ranks"] = ([*torchrun, "--master_port=29832"], ["--distributed_backend", "fsdp"])
    if (bin_dir / "deepspeed").exists():
        for stage in (1, 2, 3):
            launcher = [bin_dir / "deepspeed", "--num_gpus", "2", "--master_port", str(29840 + stage)]
            runs[f"deepspeed ZeRO-{stage}, 2 ranks"] = (launcher, ["--deepspeed", "--zero_stage", str(stage)])
    peaks = {}
    for name, (launcher, extra) in runs.items():
        out = work / name.split(",")[0].replace(" ", "_")
        cmd = [*launcher, root / "train_dalle.py", *common, "--output", out, *extra]
        peaks[name] = peak_rss_by_rank(list(map(str, cmd)), env, root)
    psi = _trainable(dim, depth)
    print(f"DALL-E dim {dim} depth {depth} ({psi / 1e6:.1f}M trainable parameters), 128 px (16 x 16 tokens), "
          f"text 64, batch 1 per rank, fp32, {steps} steps; peak resident memory per rank")  # fmt: skip
    ddp = peaks["ddp, 2 ranks"]
    print(f"{'run':32} {'rank 0 GiB':>10} {'vs ddp':>8} {'rank 1 GiB':>10} {'vs ddp':>8}")
    for name, peak in peaks.items():
        cells = [f"{peak[r]:>10.3f} {peak[r] - ddp[r]:>+8.3f}" if r in peak else f"{'':>19}" for r in (0, 1)]
        print(f"{name:32} {' '.join(cells)}")
    print("under fsdp and ZeRO-3 rank 0 builds a plain copy of the model only while it draws samples")
    print(f"(fp32 Adam model state: 16 B x {psi / 1e6:.1f}M = {16 * psi / GiB:.3f} GiB unsharded; "
          f"ZeRO-3 / FSDP on 2 ranks hold half)")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


def peak_rss_by_rank(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[int, float]:
    """Run ``cmd`` (a launcher starting train_dalle.py ranks) and sample every rank's resident memory
    every 50 ms: its peak in GiB by rank (RANK in the process's environment; 0 for a lone process)."""
    import psutil

    peaks: dict[int, float] = {}
    with tempfile.TemporaryFile() as log:  # not a pipe: a full pipe would stall the ranks
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        launcher = psutil.Process(proc.pid)
        while proc.poll() is None:
            for child in [launcher, *launcher.children(recursive=True)]:
                try:
                    line = child.cmdline()
                    if not any(part.endswith("train_dalle.py") for part in line):
                        continue
                    launchers = ("torch.distributed.run", "deepspeed.launcher.launch")
                    if any(part in launchers or part.endswith("bin/deepspeed") for part in line):
                        continue  # a launcher, not a rank
                    rank = int(child.environ().get("RANK", "0"))
                    peaks[rank] = max(peaks.get(rank, 0.0), child.memory_info().rss / GiB)
                except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                    continue
            time.sleep(0.05)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{log.read().decode()[-3000:]}")
    return peaks


def _trainable(dim: int, depth: int) -> int:
    """Trainable parameters of the measured DALL-E (meta device: nothing allocated)."""
    with torch.device("meta"):
        vae = DiscreteVAE(image_size=128, num_layers=3, num_tokens=1024, hidden_dim=32)
        dalle = DALLE(dim=dim, vae=vae, num_text_tokens=1000, text_seq_len=64, depth=depth, heads=dim // 64,
                      dim_head=64)  # fmt: skip
    return sum(p.numel() for p in dalle.parameters() if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help="data-parallel ranks N")
    parser.add_argument("--measure", action="store_true", help="measure real 2-rank runs on this machine")
    parser.add_argument("--dim", type=int, default=512, help="--measure: the model's width")
    parser.add_argument("--depth", type=int, default=12, help="--measure: the model's depth")
    parser.add_argument("--steps", type=int, default=3, help="--measure: training steps a run")
    args = parser.parse_args()
    if args.measure:
        measure(args.dim, args.depth, args.steps)
        return
    n = args.gpus
    rows = [(dim, depth, trainable_parameters(dim, depth)) for dim, depth in SIZES]
    rows.append((1536, 42, mindalle_parameters()))  # minDALL-E 1.3B, converted (64 text, 256 image tokens)

    print(f"DALL-E at 256 px (1024 image tokens, 8192 codes), text 256 tokens; N = {n} ranks")
    print("last row: minDALL-E 1.3B as converted (16 x 16 codes of 16384, 64 text tokens of 16384)\n")
    print("Communicated per rank per optimizer step, GiB (bf16 gradients; fp32 doubles it)")
    names = list(communication(1, 2))
    print(
        f"{'dim':>5} {'depth':>5} {'params':>8}  " + "  ".join(f"{name.split(' (')[0]:>18}" for name in names)
    )
    for dim, depth, psi in rows:
        values = communication(psi, 2)
        print(
            f"{dim:>5} {depth:>5} {psi / 1e6:>7.0f}M  "
            + "  ".join(f"{values[k] / GiB:>18.2f}" for k in names)
        )
    for name in names:
        print(f"  {name}")

    print(f"\nModel state per GPU, GiB (weights + gradients + Adam state; activations not included), N = {n}")
    names = list(memory(1, n))
    print(
        f"{'dim':>5} {'depth':>5} {'params':>8}  " + "  ".join(f"{name.split(' (')[0]:>22}" for name in names)
    )
    for dim, depth, psi in rows:
        values = memory(psi, n)
        print(
            f"{dim:>5} {depth:>5} {psi / 1e6:>7.0f}M  "
            + "  ".join(f"{values[k] / GiB:>22.2f}" for k in names)
        )
    for name in names:
        print(f"  {name}")


if __name__ == "__main__":
    main()
