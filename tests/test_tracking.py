"""Watching a run: wandb (offline without an account) and TensorBoard get the metrics and sample images,
only the root rank tracks, the terminal shows a tqdm bar or plain lines with an ETA, the run directory
describes its environment, ``python -m dalle_dist.plot`` draws the curves, and codebook collapse is
detected."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, TINY_DALLE, TINY_VAE, launch_2_ranks, run_cmd, train_tiny_vae
from PIL import Image

from dalle_dist.training.codebook import CodebookUsage

VAE_RUN = [sys.executable, ROOT / "train_vae.py", *TINY_VAE.split(), "--max_steps", "4", "--log_every", "1",
           "--sample_every", "2"]  # fmt: skip


def no_wandb_account(tmp_path: Path) -> dict[str, str]:
    """An environment in which wandb finds no API key (and writes nothing outside ``tmp_path``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(tmp_path / "home"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}


def tensorboard_scalars(run_dir: Path) -> tuple[dict[str, list[int]], list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["images"]


@pytest.mark.slow
def test_vae_run_tracked_by_wandb_offline_and_tensorboard(tmp_path):
    out = tmp_path / "run"
    proc = run_cmd(
        [*VAE_RUN, "--output", out, "--tracker", "wandb,tensorboard"], env=no_wandb_account(tmp_path)
    )
    assert proc.stdout.count("wandb: no API key configured: logging offline") == 1, proc.stdout
    assert "wandb sync" in proc.stdout
    offline = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0, list((out / "wandb").rglob("*"))
    scalars, images = tensorboard_scalars(out)
    for tag in (
        "loss",
        "lr",
        "temperature",
        "codebook_used",
        "codebook_perplexity",
        "samples_per_s",
        "cpu_mem_gb",
    ):
        assert scalars.get(tag) == [1, 2, 3, 4], (tag, scalars)
    assert images == ["samples"]
    env = yaml.safe_load((out / "environment.yaml").read_text())
    assert (
        env["backend"] == "single"
        and env["world_size"] == 1
        and env["versions"]["torch"] == torch.__version__
    )
    assert (out / "config.yaml").is_file() and "train_vae.py" in (out / "command.txt").read_text()


def test_wandb_mode_from_the_environment_is_respected(tmp_path):
    env = {**no_wandb_account(tmp_path), "WANDB_MODE": "disabled"}
    proc = run_cmd(
        [*VAE_RUN, "--max_steps", "1", "--output", tmp_path / "run", "--tracker", "wandb"], env=env
    )
    assert "logging offline" not in proc.stdout
    assert not list((tmp_path / "run").glob("wandb/offline-run-*"))


def test_progress_bar_or_plain_lines(tmp_path):
    plain = run_cmd([*VAE_RUN, "--output", tmp_path / "plain"])  # stdout is a pipe: plain lines
    assert "step 1/4 |" in plain.stdout and "| eta " in plain.stdout and "step/s" not in plain.stdout
    bar = run_cmd([*VAE_RUN, "--output", tmp_path / "bar", "--progress", "bar"])
    assert "4/4" in bar.stdout and ("step/s" in bar.stdout or "s/step" in bar.stdout), bar.stdout
    assert "VAE trained" in bar.stdout


def test_unknown_tracker_is_refused(tmp_path):
    proc = run_cmd([*VAE_RUN, "--output", tmp_path / "run", "--tracker", "mlflow"], expect=2)
    assert "unknown tracker 'mlflow'" in proc.stderr and "wandb, tensorboard" in proc.stderr


def test_plot_draws_the_curves(tmp_path):
    out = tmp_path / "run"
    run_cmd([*VAE_RUN, "--output", out])
    proc = run_cmd([sys.executable, "-m", "dalle_dist.plot", out])
    with Image.open(out / "curves.png") as png:
        assert png.format == "PNG" and png.width >= 600 and png.height >= 600, png.size
    assert str(out / "curves.png") in proc.stdout
    bad = run_cmd([sys.executable, "-m", "dalle_dist.plot", tmp_path / "nothing"], expect=2)
    assert "metrics.jsonl does not exist" in bad.stderr


@pytest.mark.slow
def test_only_the_root_rank_tracks(tmp_path):
    vae = train_tiny_vae(tmp_path / "vae")
    out = tmp_path / "run"
    flags = [
        *TINY_DALLE.split(),
        "--batch_size",
        "4",
        "--max_steps",
        "3",
        "--log_every",
        "1",
        "--sample_every",
        "3",
    ]
    proc = run_cmd(launch_2_ranks("torchrun", "train_dalle.py", "--vae_path", vae, "--output", out, *flags,
                                  "--tracker", "tensorboard"))  # fmt: skip
    scalars, images = tensorboard_scalars(out)  # one event file: one writer
    assert scalars["loss"] == [1, 2, 3] and scalars["text_loss"] == [1, 2, 3] and images == ["samples"]
    assert sum(line.startswith("step 3/3 |") for line in proc.stdout.splitlines()) == 1, proc.stdout


def test_codebook_usage_and_collapse_warning():
    usage = CodebookUsage(num_tokens=64, window=4)
    for _ in range(4):
        usage.update(torch.arange(64).repeat(3))  # every code, evenly
    assert usage.used_share() == 1.0 and usage.perplexity() == pytest.approx(64)
    assert usage.collapse_warning(step=4) is None
    for _ in range(4):  # the window slides: only the last 4 batches count
        usage.update(torch.tensor([5, 5, 5, 9]))
    assert usage.used_share() == 2 / 64 and usage.perplexity() == pytest.approx(2 ** (0.811278), rel=1e-4)
    warning = usage.collapse_warning(step=8)
    assert warning is not None and "2 of 64 codes" in warning and "--starting_temp" in warning
