"""Guarantees 1 and 2 of [6/8] for one process: SIGKILL at a random step, or in the middle of writing a
checkpoint, then the same command with --resume: the final weights equal an uninterrupted run's bit for
bit, and a half-written checkpoint never becomes one (``latest`` keeps naming the previous one)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, train_tiny_vae
from safetensors.torch import load_file

FLAGS = [
    *TINY_DALLE.split(),
    "--batch_size",
    "8",
    "--log_every",
    "1",
    "--sample_every",
    "100",
    "--max_steps",
    "8",
]


def command(vae: Path, out: Path, *extra) -> list[str]:
    return [
        str(c)
        for c in (sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--output", out, *FLAGS, *extra)
    ]


def env(faults: str = "") -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DALLE_DIST_FAULTS": faults}


def run(cmd: list[str], faults: str = "", expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env(faults))
    assert proc.returncode == expect, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return train_tiny_vae(tmp_path_factory.mktemp("kill") / "vae")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, vae) -> Path:
    out = tmp_path_factory.mktemp("kill") / "straight"
    run(command(vae, out, "--save_every_n_steps", "2"))
    return out


def test_killed_while_writing_a_checkpoint(tmp_path, vae, straight):
    out = tmp_path / "run"
    run(command(vae, out, "--save_every_n_steps", "2"), faults="kill_in_save@4", expect=-signal.SIGKILL)
    checkpoints = out / "checkpoints"
    # every file of step 4 was written, but it was never renamed into place: step 2 is still the latest
    assert (checkpoints / ".tmp-step-00000004" / "model.safetensors").is_file()
    assert not (checkpoints / "step-00000004").exists()
    assert (out / "latest").read_text().strip() == "step-00000002"
    proc = run(command(vae, out, "--save_every_n_steps", "2", "--resume"))
    assert "resuming" in proc.stdout and "at step 2" in proc.stdout
    assert not (checkpoints / ".tmp-step-00000004").exists() and (checkpoints / "step-00000004").is_dir()
    assert_same_weights(out, straight)


def test_killed_at_a_random_step(tmp_path, vae, straight):
    seed = random.randrange(1 << 30)
    kill_after = random.Random(seed).randint(2, 6)
    out = tmp_path / "run"
    proc = subprocess.Popen(command(vae, out, "--save_every_n_steps", "1"), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if lines and json.loads(lines[-1]).get("step", 0) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before step {kill_after} (seed {seed})"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "final").exists()
    resumed = run(command(vae, out, "--save_every_n_steps", "1", "--resume"))
    assert "resuming" in resumed.stdout, f"seed {seed}"
    assert_same_weights(out, straight)
