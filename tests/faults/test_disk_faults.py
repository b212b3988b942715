"""Guarantees 2 and 3 of [6/8] at the disk: a checkpoint that does not read back as written never becomes
``latest`` and ``--keep_n_checkpoints`` never prunes the previous good one; a disk that fills up (the
kernel's file-size limit, ``ulimit -f``, makes writes fail as on a full disk) stops the run with one
clear line and the checkpoints intact; both runs then finish with ``--resume``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DALLE, run_cmd, train_tiny_vae

from dalle_dist.checkpoint import load_checkpoint

FLAGS = [*TINY_DALLE.split(), "--batch_size", "8", "--log_every", "1", "--sample_every", "1000"]


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return train_tiny_vae(tmp_path_factory.mktemp("disk") / "vae")


def command(vae: Path, out: Path, *extra) -> list:
    return [sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--output", out, *FLAGS, *extra]


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    line = stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, stderr
    return line


def latest(out: Path) -> str:
    return (out / "latest").read_text().strip()


def test_a_checkpoint_that_does_not_read_back_never_replaces_the_good_one(tmp_path, vae):
    out = tmp_path / "run"
    keep = ["--max_steps", "4", "--save_every_n_steps", "1", "--keep_n_checkpoints", "1"]
    proc = run_cmd(command(vae, out, *keep), expect=2, DALLE_DIST_FAULTS="corrupt_in_save@3")
    line = one_line(proc.stderr)
    assert "the checkpoint of step 3 did not read back as written" in line, line
    assert "latest still names step-00000002" in line and "--resume" in line, line
    assert latest(out) == "step-00000002"
    load_checkpoint(out / "checkpoints" / "step-00000002", verify=True)  # kept, and whole
    assert not (out / "checkpoints" / "step-00000001").exists()  # keep 1 pruned what came before it
    run_cmd(command(vae, out, *keep, "--resume"))
    assert latest(out) == "step-00000004"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004"]
    load_checkpoint(out, verify=True)


def test_a_full_disk_stops_the_run_with_checkpoints_intact(tmp_path, vae):
    out = tmp_path / "run"
    run_cmd(command(vae, out, "--max_steps", "2", "--save_every_n_steps", "2"))
    weights = (out / "checkpoints" / "step-00000002" / "model.safetensors").stat().st_size
    # files up to just under one weights file fit (config, logs, sample grids); the next checkpoint does not
    blocks = weights // 1024 - 1
    more = command(vae, out, "--max_steps", "4", "--save_every_n_steps", "2", "--resume")
    full = ["bash", "-c", f"ulimit -f {blocks} && exec {shlex.join(map(str, more))}"]
    proc = run_cmd(full, expect=2)
    line = one_line(proc.stderr)
    assert "could not write checkpoint" in line and "step-00000004" in line, line
    assert "File too large" in line and "free disk space" in line and "--resume" in line, line
    assert latest(out) == "step-00000002"
    assert not (out / "checkpoints" / "step-00000004").exists()
    assert not list((out / "checkpoints").glob(".tmp-*")), "the half-written checkpoint is cleaned up"
    load_checkpoint(out / "checkpoints" / "step-00000002", verify=True)
    run_cmd(more)
    assert latest(out) == "step-00000004" and (out / "final" / "meta.json").is_file()
