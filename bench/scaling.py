"""Data-parallel scaling on this machine, per backend, as ratios measured in one run.

The demo's DALL-E (configs/demo_dalle.yaml: dim 256, depth 4, batch 32 per rank, fp32) trains for a fixed
number of steps under each setting; the rate is the loop's own samples/s over the timed steps (the first
steps, which include start-up, are dropped).

- ``1 x 2 threads``: one process using both cores (the baseline).
- ``2 x 1, no comm``: two independent single processes at once, one thread each: the same compute and
  core sharing as a 2-rank run, without any communication.
- ``<backend> 2 x 1``: a real 2-rank run under its launcher (torchrun for ddp and fsdp, horovodrun for
  horovod, the deepspeed launcher for DeepSpeed ZeRO-1/2/3).

Communication share of a step = 1 - rate(backend) / rate(no comm).

    .venv/bin/python bench/scaling.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = ["--config", str(ROOT / "configs" / "demo_dalle.yaml"), "--no-amp"]


def env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "DS_ACCELERATOR": "cpu",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def rate(run_dir: Path, skip: int) -> float:
    """Mean samples/s over the log lines after the first ``skip`` steps (the loop logs every 10 steps;
    a multi-rank run logs the samples of all ranks)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r and r["step"] > skip]
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dalle_dist-scaling-"))
    vae = work / "vae"
    subprocess.run(
        [sys.executable, ROOT / "train_vae.py", "--config", ROOT / "configs" / "demo_vae.yaml",
         "--max_steps", "20", "--output", vae],
        check=True, capture_output=True, env=env(2),
    )  # fmt: skip
    never = "100000"
    common = [*MODEL, "--vae_path", str(vae), "--max_steps", str(args.steps), "--log_every", "10",
              "--sample_every", never, "--save_every_n_steps", never, "--eval_every", never]  # fmt: skip
    skip = 10

    def train(name: str, launcher: list, threads: int, *extra: str) -> Path:
        out = work / name
        cmd = [*map(str, launcher), str(ROOT / "train_dalle.py"), *common, "--output", str(out), *extra]
        subprocess.run(cmd, check=True, capture_output=True, env=env(threads), cwd=ROOT)
        return out

    results: dict[str, float] = {}
    results["1 x 2 threads (baseline)"] = rate(train("one", [sys.executable], 2), skip)

    procs = []
    for i in range(2):
        cmd = [
            sys.executable,
            ROOT / "train_dalle.py",
            *common,
            "--output",
            work / f"alone{i}",
            "--seed",
            str(i),
        ]
        procs.append(subprocess.Popen(list(map(str, cmd)), env=env(1), stdout=subprocess.DEVNULL))
    for p in procs:
        assert p.wait() == 0
    results["2 x 1, no comm"] = sum(rate(work / f"alone{i}", skip) for i in range(2))

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29811"]
    results["ddp 2 x 1 (torchrun)"] = rate(train("ddp", torchrun, 1), skip)
    torchrun[-1] = "--master_port=29812"
    results["fsdp 2 x 1 (torchrun)"] = rate(train("fsdp", torchrun, 1, "--distributed_backend", "fsdp"), skip)
    if shutil.which("horovodrun", path=env(1)["PATH"]):
        hvd = [BIN / "horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", sys.executable]
        results["horovod 2 x 1 (horovodrun)"] = rate(train("hvd", hvd, 1), skip)
    if (BIN / "deepspeed").exists():
        for stage in (1, 2, 3):
            ds = [BIN / "deepspeed", "--num_gpus", "2", "--master_port", str(29820 + stage)]
            name = f"deepspeed ZeRO-{stage} 2 x 1"
            results[name] = rate(train(f"ds{stage}", ds, 1, "--deepspeed", "--zero_stage", str(stage)), skip)

    base, alone = results["1 x 2 threads (baseline)"], results["2 x 1, no comm"]
    print(
        f"demo DALL-E (dim 256, depth 4, batch 32 per rank, fp32), {args.steps} steps, first {skip} dropped"
    )
    print(f"{'setting':32} {'x baseline':>10} {'comm share':>11}")
    for name, value in results.items():
        share = "" if "no comm" in name or "baseline" in name else f"{1 - value / alone:>10.0%}"
        print(f"{name:32} {value / base:>10.2f} {share:>11}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
