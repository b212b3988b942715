"""Distributed training with real processes: torchrun + DDP (gloo on this CPU machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, TINY_VAE, run_cmd
from safetensors.torch import load_file

VAE_FLAGS = TINY_VAE.split()
# no dropout and no caption dropout: the runs are deterministic, so DDP must equal one process exactly
DALLE_FLAGS = [*TINY_DALLE.split(), "--save_every_n_steps", "3", "--log_every", "1", "--sample_every", "100"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return run_cmd(cmd)


def torchrun(nproc: int, script: str, *args) -> subprocess.CompletedProcess:
    return run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(ROOT / script),
            *map(str, args),
        ]
    )


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "vae"
    run([sys.executable, str(ROOT / "train_vae.py"), "--output", str(out), "--max_steps", "2", *VAE_FLAGS])
    return out


@pytest.mark.slow
def test_torchrun_ddp_equals_single_process(tmp_path, vae_run):
    """2 ranks x batch 4 read the same global batches as 1 process x batch 8: same weights."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run(
        [
            sys.executable,
            str(ROOT / "train_dalle.py"),
            "--vae_path",
            str(vae_run),
            "--output",
            str(single),
            "--batch_size",
            "8",
            "--max_steps",
            "6",
            *DALLE_FLAGS,
        ]
    )
    proc = torchrun(
        2,
        "train_dalle.py",
        "--vae_path",
        vae_run,
        "--output",
        ddp,
        "--batch_size",
        "4",
        "--max_steps",
        "6",
        *DALLE_FLAGS,
    )
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    assert "batch 4 x 2 ranks" in proc.stdout
    assert proc.stdout.count("DALL-E trained") == 1, "only the root rank reports"
    a, b = load_file(single / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    halfway = load_file(ddp / "checkpoints" / "step-00000003" / "model.safetensors")
    assert not torch.equal(halfway["to_logits.weight"], b["to_logits.weight"]), "the model kept training"
    run([sys.executable, str(ROOT / "generate.py"), "--dalle_path", str(ddp), "--text", "red circle",
         "--num_images", "2", "--outputs_dir", str(tmp_path / "gen")])  # fmt: skip
    assert (tmp_path / "gen" / "red_circle" / "grid.png").is_file()


@pytest.mark.slow
def test_torchrun_ddp_resume(tmp_path, vae_run):
    """A 2-rank run stopped at step 3 and resumed equals an uninterrupted 2-rank run."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = ["--vae_path", vae_run, "--batch_size", "4", *DALLE_FLAGS]
    torchrun(2, "train_dalle.py", "--output", straight, "--max_steps", "6", *flags)
    torchrun(2, "train_dalle.py", "--output", split, "--max_steps", "3", *flags)
    proc = torchrun(2, "train_dalle.py", "--output", split, "--resume", "--max_steps", "6", *flags)
    assert "resuming" in proc.stdout
    a, b = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(split / "final" / "model.safetensors"),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_ddp_without_launcher_is_explained(tmp_path, vae_run):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train_dalle.py"),
            "--vae_path",
            str(vae_run),
            "--output",
            str(tmp_path / "o"),
            "--distributed_backend",
            "ddp",
            "--max_steps",
            "1",
            *DALLE_FLAGS,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        proc.returncode == 2 and "torchrun --nproc_per_node" in proc.stderr and "Traceback" not in proc.stderr
    )


@pytest.mark.slow
def test_torchrun_ddp_gradient_accumulation_equals_single_process(tmp_path, vae_run):
    """ga_steps 2 under DDP (no_sync on the first micro-batch) equals one process with the same windows."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    flags = ["--vae_path", vae_run, "--max_steps", "3", "--ga_steps", "2", *DALLE_FLAGS]
    run(
        [
            sys.executable,
            str(ROOT / "train_dalle.py"),
            "--output",
            str(single),
            "--batch_size",
            "8",
            *map(str, flags),
        ]
    )
    torchrun(2, "train_dalle.py", "--output", ddp, "--batch_size", "4", *flags)
    a, b = load_file(single / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
