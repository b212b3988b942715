"""generate.py --num_candidates N --keep K --clip_path: N samples per prompt ranked by a CLIP trained with
train_clip.py; the best K are kept best first, with their scores in scores.json and in the grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_DALLE, run_cmd, train_tiny_vae
from test_clip_training import FLAGS as CLIP_FLAGS

GENERATE = [
    sys.executable,
    ROOT / "generate.py",
    "--text",
    "a red circle",
    "--seed",
    "3",
    "--batch_size",
    "4",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ranking")
    vae = train_tiny_vae(base / "vae")
    dalle = base / "dalle"
    run_cmd(
        [
            sys.executable,
            ROOT / "train_dalle.py",
            "--vae_path",
            vae,
            "--output",
            dalle,
            *TINY_DALLE.split(),
            "--batch_size",
            "8",
            "--max_steps",
            "2",
            "--sample_every",
            "100",
        ]
    )
    clip = base / "clip"
    run_cmd([sys.executable, ROOT / "train_clip.py", "--output", clip, "--max_steps", "3", *CLIP_FLAGS])
    return dalle, clip


def generate(runs: tuple[Path, Path], out: Path, *extra: str) -> dict:
    dalle, clip = runs
    run_cmd([*GENERATE, "--dalle_path", dalle, "--clip_path", clip, "--outputs_dir", out, *extra])
    return json.loads((out / "a_red_circle" / "scores.json").read_text())


def test_the_best_candidates_are_kept_best_first(tmp_path, runs):
    every = generate(runs, tmp_path / "all", "--num_candidates", "6", "--keep", "6")
    scores = [image["clip_score"] for image in every["images"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 6
    best = generate(runs, tmp_path / "best", "--num_candidates", "6", "--keep", "2")  # same seed: same 6
    assert [image["clip_score"] for image in best["images"]] == scores[:2]
    folder = tmp_path / "best" / "a_red_circle"
    assert sorted(p.name for p in folder.iterdir()) == [
        "0.png",
        "1.png",
        "caption.txt",
        "grid.png",
        "scores.json",
    ]
    for i in range(2):
        assert (folder / f"{i}.png").read_bytes() == (
            tmp_path / "all" / "a_red_circle" / f"{i}.png"
        ).read_bytes()
    assert best["candidates"] == 6 and best["prompt"] == "a red circle"


def test_candidates_without_a_clip_are_refused(tmp_path, runs):
    proc = run_cmd(
        [*GENERATE, "--dalle_path", runs[0], "--num_candidates", "4", "--outputs_dir", tmp_path], expect=2
    )
    assert "add --clip_path" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cmd(
        [*GENERATE, "--dalle_path", runs[0], "--clip_path", runs[0], "--outputs_dir", tmp_path], expect=2
    )
    assert "is a DALL-E checkpoint, but --clip_path needs a CLIP one" in proc.stderr, proc.stderr
