"""Horovod with real processes: `horovodrun -np 2` (Gloo) against one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, TINY_VAE, run_cmd
from safetensors.torch import load_file

hvd = pytest.importorskip("horovod.torch", reason="Horovod is not installed (make install-dev builds it)")
HOROVODRUN = Path(sys.executable).parent / "horovodrun"
DALLE_FLAGS = [*TINY_DALLE.split(), "--save_every_n_steps", "3", "--log_every", "1", "--sample_every", "100"]


def run(cmd: list) -> subprocess.CompletedProcess:
    return run_cmd(cmd)


@pytest.mark.slow
def test_horovodrun_equals_single_process(tmp_path):
    vae = tmp_path / "vae"
    run([sys.executable, ROOT / "train_vae.py", "--output", vae, "--max_steps", "2", *TINY_VAE.split()])
    single, hv = tmp_path / "single", tmp_path / "hvd"
    flags = ["--vae_path", vae, *DALLE_FLAGS]
    run(
        [
            sys.executable,
            ROOT / "train_dalle.py",
            "--output",
            single,
            "--batch_size",
            "8",
            "--max_steps",
            "6",
            *flags,
        ]
    )
    horovodrun = [
        HOROVODRUN,
        "-np",
        "2",
        "-H",
        "localhost:2",
        "--gloo",
        sys.executable,
        ROOT / "train_dalle.py",
    ]
    # stopped at step 3 and resumed: the result must still equal the uninterrupted single process
    run([*horovodrun, "--output", hv, "--batch_size", "4", "--max_steps", "3", *flags])
    proc = run([*horovodrun, "--output", hv, "--batch_size", "4", "--max_steps", "6", "--resume", *flags])
    assert "resuming" in proc.stdout
    assert "batch 4 x 2 ranks" in proc.stdout and "weights identical on all 2 ranks: yes" in proc.stdout
    a, b = load_file(single / "final" / "model.safetensors"), load_file(hv / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    gen = run([sys.executable, ROOT / "generate.py", "--dalle_path", hv, "--text", "red circle",
               "--num_images", "2", "--outputs_dir", tmp_path / "gen"])  # fmt: skip
    assert (tmp_path / "gen" / "red_circle" / "grid.png").is_file(), gen.stdout
