"""Guarantee 8 of [6/8]: a NaN / Inf loss skips its batch with a warning; K in a row stop the run (exit 2)
with the checkpoints intact and resumable. Faults are injected with DALLE_DIST_FAULTS (training/faults.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DALLE, launch_2_ranks, run_cmd, train_tiny_vae

FLAGS = [*TINY_DALLE.split(), "--batch_size", "8", "--log_every", "1", "--sample_every", "100"]


def run(cmd: list, faults: str = "", expect: int = 0) -> subprocess.CompletedProcess:
    return run_cmd(cmd, expect, DALLE_DIST_FAULTS=faults)


def train(vae: Path, out: Path, *extra, faults: str = "", expect: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--output", out, *FLAGS, *extra]
    return run(cmd, faults, expect)


def steps_logged(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return train_tiny_vae(tmp_path_factory.mktemp("faults") / "vae")


def test_one_nan_batch_is_skipped(tmp_path, vae):
    out = tmp_path / "run"
    proc = train(vae, out, "--max_steps", "4", faults="nan_loss@2")
    assert "warning: step 2: the loss is not finite" in proc.stdout and "batch skipped" in proc.stdout
    assert steps_logged(out) == [1, 2, 3, 4]  # the skipped batch is no step: all 4 updates still happen
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads((out / "final" / "meta.json").read_text())["step"] == 4
    assert any(json.loads(line).get("nonfinite_skipped") == 1 for line in (out / "metrics.jsonl").open()), (
        last
    )


def test_k_in_a_row_stop_with_checkpoints_intact_and_resumable(tmp_path, vae):
    out = tmp_path / "run"
    proc = train(vae, out, "--max_steps", "6", "--save_every_n_steps", "1", "--nonfinite_patience", "2",
                 faults="nan_loss@2*2", expect=2)  # fmt: skip
    assert "error: the loss was not finite for 2 batches in a row at step 2" in proc.stderr
    assert "step-00000002" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "latest").read_text().strip() == "step-00000002" and not (out / "final").exists()
    resumed = train(vae, out, "--max_steps", "6", "--save_every_n_steps", "1", "--resume")
    assert "resuming" in resumed.stdout
    assert json.loads((out / "final" / "meta.json").read_text())["step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_nan_on_one_rank_skips_on_every_rank(tmp_path, vae, launcher):
    """Rank 1 alone sees a NaN loss: both ranks skip the batch (nobody waits for a missing reduction) and
    end with identical weights, under torchrun (DDP) and under the deepspeed launcher (ZeRO-2)."""
    out = tmp_path / launcher
    args = ["--vae_path", vae, "--output", out, *FLAGS, "--batch_size", "4", "--max_steps", "4"]
    if launcher == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
        args += ["--deepspeed", "--zero_stage", "2"]
    cmd = launch_2_ranks(launcher, "train_dalle.py", *args)
    proc = run(cmd, faults="nan_loss@2:1")
    assert "batch skipped" in proc.stdout and "weights identical on all 2 ranks: yes" in proc.stdout
    assert steps_logged(out) == [1, 2, 3, 4]


def test_bad_fault_spec_is_named(tmp_path, vae):
    proc = train(vae, tmp_path / "x", "--max_steps", "1", faults="explode@2", expect=2)
    assert "unknown fault 'explode'" in proc.stderr
