"""Guarantee 4 of [6/8]: a folder and a shard set with 10 % broken images, empty and missing captions, a
truncated tar and a missing shard. Training completes, the log names what was skipped (counts per kind,
with names), and the samples trained on are exactly the good ones."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DALLE, run_cmd, train_tiny_vae
from PIL import Image

FLAGS = [*TINY_DALLE.split(), "--log_every", "1", "--sample_every", "1000", "--epochs", "1"]


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (6 * i, 200 - 4 * i, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def broken_png(i: int) -> bytes:
    """Broken in the two ways scraped data is: cut off half-way, or not an image at all."""
    return png(i)[: len(png(i)) // 2] if i % 2 else b"<html>404 not found</html>"


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return train_tiny_vae(tmp_path_factory.mktemp("corrupt") / "vae")


def train(vae: Path, data: Path, out: Path, *extra: str) -> tuple[str, dict]:
    cmd = [sys.executable, ROOT / "train_dalle.py", "--vae_path", vae, "--image_text_folder", data,
           "--output", out, *FLAGS, *extra]  # fmt: skip
    proc = run_cmd(cmd)
    meta = json.loads((out / "final" / "meta.json").read_text())
    return proc.stdout, meta


def test_folder_with_broken_pairs_trains_on_the_good_ones(tmp_path, vae):
    """40 images: 4 broken (10 %), 2 with empty captions, 2 without a caption file -> 32 good ones."""
    data = tmp_path / "folder"
    data.mkdir()
    for i in range(40):
        broken = i % 10 == 3
        (data / f"{i:02d}.png").write_bytes(broken_png(i) if broken else png(i))
        if i in (5, 15):
            (data / f"{i:02d}.txt").write_text("\n  \n")
        elif i not in (7, 17):
            (data / f"{i:02d}.txt").write_text(f"picture {i}\n")
    stdout, meta = train(vae, data, tmp_path / "run", "--batch_size", "8")
    assert "data: skipped 8 of 40 pairs" in stdout and "training on the 32 good ones" in stdout, stdout
    lines = [line for line in stdout.splitlines() if line.startswith("data: skipped ")]
    assert any(line.startswith("data: skipped 4 unreadable images: ") and "03.png" in line for line in lines)
    assert any(line.startswith("data: skipped 2 empty captions: ") and "05.txt" in line for line in lines)
    assert any(
        line.startswith("data: skipped 2 images without captions: ") and "07.png" in line for line in lines
    )
    assert "data: trained on 32 samples in 4 steps" in stdout, stdout
    assert meta["samples_trained"] == 32 and meta["step"] == 4


def member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def broken_shards(data: Path) -> int:
    """Shards 0-3 of 10 samples each (4 broken images, an empty and a missing caption among them), shard 3
    cut off inside its 6th image, shard 4 missing; returns the good samples, counted as they are written."""
    data.mkdir()
    good = 0
    for s in range(4):
        path = data / f"part-{s}.tar"
        with tarfile.open(path, "w") as tar:
            for j in range(10):
                i = 10 * s + j
                broken, empty, missing = i % 10 == 3, i == 12, i == 21
                member(tar, f"{i:03d}.png", broken_png(i) if broken else png(i))
                if not missing:
                    member(tar, f"{i:03d}.txt", b" \n" if empty else f"picture {i}".encode())
                good += not (broken or empty or missing or (s == 3 and j >= 5))
        if s == 3:  # cut inside sample 035's image: 030-034 stay readable (033 is a broken image)
            with tarfile.open(path) as tar:
                cut = tar.getmember("035.png").offset_data + 40
            path.write_bytes(path.read_bytes()[:cut])
    return good


def test_shards_with_broken_samples_a_truncated_tar_and_a_missing_shard(tmp_path, vae):
    """The shards of ``broken_shards``: the good samples are trained on, the rest named by kind."""
    data = tmp_path / "shards"
    good = broken_shards(data)
    assert good == 29  # of 35 samples readable enough to count: batches of 5 take every one
    stdout, meta = train(
        vae, data / "part-{0..4}.tar", tmp_path / "run", "--wds", "png,txt", "--batch_size", "5"
    )
    assert "missing shard" in stdout and "part-4.tar" in stdout, stdout
    assert "truncated shard" in stdout and "part-3.tar" in stdout, stdout
    assert "skipped (broken image)" in stdout and "skipped (missing caption)" in stdout, stdout
    assert "skipped (empty caption)" in stdout, stdout
    assert f"data: trained on {good} samples" in stdout, stdout
    assert meta["samples_trained"] == good


def skipped_by_kind(run: Path) -> dict[str, int]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["skipped_by_kind"] for r in records if "skipped_by_kind" in r)


def test_two_ranks_report_the_jobs_skipped_samples_not_one_ranks(tmp_path, vae):
    """Each rank reads its own part of the shards: the counts logged at the end are the job's, equal to
    one process's over the same data. Here rank 1's stream starts with the missing shard: its first batch
    is all broken, and the next good one stands in for it (this once stopped the job)."""
    from conftest import launch_2_ranks

    data = tmp_path / "shards"
    broken_shards(data)
    flags = ["--vae_path", vae, "--image_text_folder", data / "part-{0..4}.tar", "--wds", "png,txt", *FLAGS]
    run_cmd(
        [sys.executable, ROOT / "train_dalle.py", *flags, "--batch_size", "4", "--output", tmp_path / "one"]
    )
    proc = run_cmd(
        launch_2_ranks(
            "torchrun", "train_dalle.py", *flags, "--batch_size", "2", "--output", tmp_path / "two"
        )
    )
    one, two = skipped_by_kind(tmp_path / "one"), skipped_by_kind(tmp_path / "two")
    # every rank reads a piece of the truncated shard: it is one shard, not one per rank
    assert one == {"broken image": 4, "empty caption": 1, "missing caption": 1, "missing shard": 1,
                   "truncated shard": 1}, one  # fmt: skip
    assert two == one
    assert "data: skipped (all 2 ranks): broken image: 4" in proc.stdout, proc.stdout
