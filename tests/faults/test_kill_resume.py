"""Guarantees 1 and 2 of [6/8]: SIGKILL at a random step, or in the middle of writing a checkpoint, then
the same command with --resume: the final weights equal an uninterrupted run's bit for bit in one process
(train_dalle.py and train_vae.py), within 1e-6 for 2 ranks under torchrun and the deepspeed launcher, and
a half-written checkpoint never becomes one (``latest`` keeps naming the previous one)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BASE_ENV, ROOT, TINY_DALLE, TINY_VAE, launch_2_ranks, run_cmd, train_tiny_vae
from PIL import Image
from safetensors.torch import load_file

from dalle_dist.data.make_shards import make_shards

FLAGS = [
    *TINY_DALLE.split(),
    "--batch_size",
    "8",
    "--log_every",
    "1",
    "--sample_every",
    "100",
    "--max_steps",
    "30",
]
# A tiny step takes ~20 ms: killed after step 2-6, a run has 24+ steps (~0.5 s) left, far more than the
# killer's reaction time (with 8 steps it once finished first).


def command(vae: Path, out: Path, *extra) -> list[str]:
    return [
        str(c)
        for c in (sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--output", out, *FLAGS, *extra)
    ]


def run(cmd: list[str], faults: str = "", expect: int = 0) -> subprocess.CompletedProcess:
    return run_cmd(cmd, expect, DALLE_DIST_FAULTS=faults)


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


def kill_at(cmd: list, out: Path, step: int, **env: str) -> None:
    """Start ``cmd``; SIGKILL its whole process group (a launcher and all its ranks, as when a machine
    dies) once ``out/metrics.jsonl`` has logged ``step``."""
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=ROOT,
        env={**os.environ, **BASE_ENV, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            if any(json.loads(line).get("step", 0) >= step for line in lines):
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before step {step}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    # the run must still have had steps to go when it was killed, or this tests nothing
    assert not (out / "final").exists(), f"the run finished before the kill after step {step}: lengthen it"


def test_killed_at_a_random_step(tmp_path, vae, straight):
    seed = random.randrange(1 << 30)
    kill_after = random.Random(seed).randint(2, 6)
    out = tmp_path / "run"
    kill_at(command(vae, out, "--save_every_n_steps", "1"), out, kill_after)
    resumed = run(command(vae, out, "--save_every_n_steps", "1", "--resume"))
    assert "resuming" in resumed.stdout, f"seed {seed}, killed after step {kill_after}"
    assert_same_weights(out, straight)


def test_vae_killed_at_a_random_step_resumes_its_temperature(tmp_path):
    """train_vae.py with a fast temperature annealing: killed and resumed, the weights and the temperature
    of the last step equal an uninterrupted run's. A tiny VAE step takes ~10 ms, so the run is 40 steps
    long: killed after step 2-6 it has ~0.3 s left, far more than the killer's reaction time."""
    cmd = [
        sys.executable,
        ROOT / "train_vae.py",
        *TINY_VAE.split(),
        "--max_steps",
        "40",
        "--log_every",
        "1",
        "--sample_every",
        "100",
        "--save_every_n_steps",
        "1",
        "--anneal_rate",
        "0.05",
        "--temp_min",
        "0.1",
    ]
    straight, out = tmp_path / "straight", tmp_path / "run"
    run([*cmd, "--output", straight])
    kill_at([*cmd, "--output", out], out, random.randint(2, 6))
    run([*cmd, "--output", out, "--resume"])
    assert_same_weights(out, straight)
    temps = [
        [json.loads(x)["temperature"] for x in (d / "metrics.jsonl").open() if "temperature" in x]
        for d in (straight, out)
    ]
    assert temps[0][-1] == temps[1][-1] == pytest.approx(max(math.exp(-0.05 * 39), 0.1))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """64 captioned images in 4 WebDataset shards."""
    base = tmp_path_factory.mktemp("shards")
    folder = base / "folder"
    folder.mkdir()
    for i in range(64):
        Image.new("RGB", (20, 20), (4 * i, 255 - 3 * i, (37 * i) % 256)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"picture number {i}\n")
    make_shards(folder, base / "shards", maxcount=16)
    return base / "shards"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_ranks_killed_at_a_random_step(tmp_path, vae, shards, launcher):
    """kill -9 of a 2-rank run on shards (the data position is part of the checkpoint) at a random step,
    under torchrun (DDP) and the deepspeed launcher (ZeRO-2): the resumed run ends within 1e-6 of an
    uninterrupted one."""
    engine = []
    if launcher == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
        engine = ["--deepspeed", "--zero_stage", "2"]

    def command(out: Path, *extra) -> list:
        flags = [*FLAGS, "--batch_size", "4", "--image_text_folder", shards, "--wds", "png,txt"]
        flags += ["--save_every_n_steps", "1", *engine, *extra]
        return launch_2_ranks(launcher, "train_dalle.py", "--vae_path", vae, "--output", out, *flags)

    straight, out = tmp_path / "straight", tmp_path / "run"
    run(command(straight))
    kill_after = random.randint(2, 6)
    kill_at(command(out), out, kill_after)
    resumed = run(command(out, "--resume"))
    assert "resuming" in resumed.stdout, f"killed after step {kill_after}"
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, f"killed after step {kill_after}: weights differ by {worst}"
