"""The three scripts end to end as subprocesses (tiny settings): layout, resume, generation, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_DALLE, TINY_VAE, run_cmd
from PIL import Image
from safetensors.torch import load_file

VAE_FLAGS = [*TINY_VAE.split(), "--log_every", "2", "--sample_every", "4"]
DALLE_FLAGS = [*TINY_DALLE.split(), "--batch_size", "8", "--log_every", "2", "--sample_every", "4"]


def run(script: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    return run_cmd([sys.executable, ROOT / script, *args], expect)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    run("train_vae.py", "--output", out, "--max_steps", "6", "--save_every_n_steps", "3", *VAE_FLAGS)
    return out


@pytest.fixture(scope="module")
def dalle_run(tmp_path_factory, vae_run) -> Path:
    out = tmp_path_factory.mktemp("runs") / "dalle"
    run(
        "train_dalle.py",
        "--vae_path",
        vae_run,
        "--output",
        out,
        "--max_steps",
        "6",
        "--save_every_n_steps",
        "3",
        *DALLE_FLAGS,
    )
    return out


def test_vae_run_directory_layout(vae_run):
    assert (vae_run / "config.yaml").is_file() and (vae_run / "metrics.jsonl").is_file()
    assert sorted(p.name for p in (vae_run / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert (vae_run / "latest").read_text().strip() == "step-00000006"
    meta = json.loads((vae_run / "final" / "meta.json").read_text())
    assert meta["kind"] == "vae" and meta["step"] == 6 and meta["data"]["kind"] == "shapes"
    assert set(meta["checksums"]) == {"model.safetensors"}
    assert any((vae_run / "samples").glob("*.png"))


def test_dalle_checkpoint_is_self_describing(dalle_run):
    meta = json.loads((dalle_run / "final" / "meta.json").read_text())
    assert meta["kind"] == "dalle" and meta["model"]["attn_types"] == ["full", "axial_row"]
    assert meta["vae"]["kind"] == "discrete" and (dalle_run / "final" / "tokenizer.json").is_file()
    assert any(k.startswith("vae.") for k in weights(dalle_run / "final"))


def test_resume_continues_exactly(tmp_path, vae_run):
    """Three steps, then --resume to six, equals six steps straight (weights, bit for bit)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--vae_path", vae_run, "--save_every_n_steps", "3", *DALLE_FLAGS]
    run("train_dalle.py", "--output", straight, "--max_steps", "6", *common)
    run("train_dalle.py", "--output", split, "--max_steps", "3", *common)
    proc = run("train_dalle.py", "--output", split, "--max_steps", "6", "--resume", *common)
    assert "resuming" in proc.stdout and "step 3" in proc.stdout
    a, b = weights(straight / "final"), weights(split / "final")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vae_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = [*VAE_FLAGS, "--save_every_n_steps", "3", "--anneal_rate", "0.1"]
    run("train_vae.py", "--output", straight, "--max_steps", "6", *flags)
    run("train_vae.py", "--output", split, "--max_steps", "3", *flags)
    run("train_vae.py", "--output", split, "--max_steps", "6", "--resume", *flags)
    a, b = weights(straight / "final"), weights(split / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_writes_dalle_pytorch_layout(tmp_path, dalle_run):
    out = tmp_path / "outputs"
    proc = run(
        "generate.py",
        "--dalle_path",
        dalle_run,
        "--text",
        "a red circle|a blue square",
        "--num_images",
        "3",
        "--batch_size",
        "2",
        "--outputs_dir",
        out,
        "--seed",
        "1",
        "--cond_scale",
        "2",
    )
    for prompt in ("a_red_circle", "a_blue_square"):
        folder = out / prompt
        assert sorted(p.name for p in folder.iterdir()) == [
            "0.png",
            "1.png",
            "2.png",
            "caption.txt",
            "grid.png",
        ]
        assert Image.open(folder / "0.png").size == (16, 16)
        assert str(folder / "grid.png") in proc.stdout
        # the grid is labelled with its prompt: a white strip with dark text above the enlarged images
        grid = np.asarray(Image.open(folder / "grid.png").convert("L"))
        assert grid.shape[1] >= 256 and grid.shape[0] > grid.shape[1]
        strip = grid[: grid.shape[0] - grid.shape[1]]
        assert strip.max() == 255 and (strip < 100).mean() > 0.01
    assert (out / "a_red_circle" / "caption.txt").read_text().strip() == "a red circle"


def test_generate_text_and_priming(tmp_path, dalle_run):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "prime.png")
    run(
        "generate.py",
        "--dalle_path",
        dalle_run / "final",
        "--text",
        "a red",
        "--gentxt",
        "--num_images",
        "1",
        "--outputs_dir",
        tmp_path / "o",
        "--img",
        tmp_path / "prime.png",
        "--num_init_img_tokens",
        "4",
    )
    assert len(list((tmp_path / "o").iterdir())) == 1


# ------------------------------------------------------------------------------------------- bad input
def _folder(tmp_path: Path, pairs: int = 3, extra_image: bool = False, extra_caption: bool = False) -> Path:
    root = tmp_path / "data"
    (root / "nested").mkdir(parents=True)
    for i in range(pairs):
        Image.new("RGB", (20, 20), (10 * i, 100, 100)).save(root / "nested" / f"{i}.png")
        (root / "nested" / f"{i}.txt").write_text(f"a picture number {i}\n")
    if extra_image:
        Image.new("RGB", (20, 20)).save(root / "lonely.png")
    if extra_caption:
        (root / "orphan.txt").write_text("no image here\n")
    return root


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing_folder", ["does not exist"]),
        ("empty_folder", ["no image"]),
        ("image_without_caption", ["lonely.png"]),
        ("caption_without_image", ["orphan.txt"]),
        ("unreadable_image", ["broken.png"]),
    ],
)
def test_bad_folders_exit_2_with_strict_data(tmp_path, vae_run, case, needles):
    if case == "missing_folder":
        folder = tmp_path / "nope"
    elif case == "empty_folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    else:
        folder = _folder(
            tmp_path,
            extra_image=case == "image_without_caption",
            extra_caption=case == "caption_without_image",
        )
        if case == "unreadable_image":
            (folder / "broken.png").write_bytes(b"\x89PNG not really")
            (folder / "broken.txt").write_text("broken\n")
    proc = run(
        "train_dalle.py",
        "--vae_path",
        vae_run,
        "--image_text_folder",
        folder,
        "--output",
        tmp_path / "o",
        *DALLE_FLAGS,
        "--strict_data",
        expect=2,
    )
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "o").exists(), "a failed start must not leave a run directory"


def test_caption_too_long_needs_truncate(tmp_path, vae_run):
    folder = _folder(tmp_path)
    (folder / "nested" / "0.txt").write_text("word " * 40 + "\n")
    proc = run(
        "train_dalle.py",
        "--vae_path",
        vae_run,
        "--image_text_folder",
        folder,
        "--output",
        tmp_path / "o",
        *DALLE_FLAGS,
        "--max_steps",
        "1",
        expect=2,
    )
    assert_one_line_error(proc, "--truncate_captions")
    run(
        "train_dalle.py",
        "--vae_path",
        vae_run,
        "--image_text_folder",
        folder,
        "--output",
        tmp_path / "o2",
        *DALLE_FLAGS,
        "--max_steps",
        "1",
        "--truncate_captions",
        "--batch_size",
        "2",
    )


def test_wrong_checkpoint_kind_and_version(tmp_path, vae_run):
    # a checkpoint of the other kind: tests/faults/test_bad_inputs.py
    proc = run("train_dalle.py", "--vae_path", tmp_path, "--output", tmp_path / "o", *DALLE_FLAGS, expect=2)
    assert_one_line_error(proc, "neither a run directory nor a checkpoint")
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((vae_run / "final" / "meta.json").read_text())
    meta["format_version"] = 99
    (old / "meta.json").write_text(json.dumps(meta))
    proc = run("train_dalle.py", "--vae_path", old, "--output", tmp_path / "o", *DALLE_FLAGS, expect=2)
    assert_one_line_error(proc, "format version 99")


def test_bad_flags_exit_2(tmp_path, vae_run):
    proc = run(
        "train_dalle.py",
        "--vae_path",
        vae_run,
        "--output",
        tmp_path / "o",
        *DALLE_FLAGS,
        "--attn_types",
        "full,diagonal",
        expect=2,
    )
    assert_one_line_error(proc, "unknown attention type 'diagonal'")
    proc = run("train_vae.py", "--output", tmp_path / "o", "--batch_size", "0", expect=2)
    assert "--batch_size: must be a positive integer" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train_dalle.py", "--output", tmp_path / "o", *DALLE_FLAGS, expect=2)
    assert_one_line_error(proc, "--vae_path")


def test_output_holding_a_run_is_not_overwritten(tmp_path, vae_run):
    before = {p: p.read_bytes() for p in vae_run.rglob("*") if p.is_file()}
    proc = run("train_vae.py", "--output", vae_run, *VAE_FLAGS, "--max_steps", "2", expect=2)
    assert_one_line_error(proc, "already holds a run", "--resume")
    proc = run("train_dalle.py", "--dalle_path", vae_run, "--output", vae_run, *DALLE_FLAGS, expect=2)
    assert "Traceback" not in proc.stderr
    after = {p: p.read_bytes() for p in vae_run.rglob("*") if p.is_file()}
    assert before == after


def test_dalle_path_into_its_own_run_points_to_resume(tmp_path, dalle_run):
    proc = run("train_dalle.py", "--dalle_path", dalle_run, "--output", dalle_run, *DALLE_FLAGS, expect=2)
    assert_one_line_error(proc, "--resume --output")


def test_config_file_and_command_line_priority(tmp_path, vae_run):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("max_steps: 2\nlearning_rate: 0.01\nbatch_size: 4\n")
    out = tmp_path / "o"
    run(
        "train_dalle.py",
        "--config",
        cfg,
        "--vae_path",
        vae_run,
        "--output",
        out,
        *DALLE_FLAGS,
        "--batch_size",
        "2",
    )
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["max_steps"] == 2 and resolved["learning_rate"] == 0.01 and resolved["batch_size"] == 2
    cfg.write_text("max_stepz: 2\n")
    proc = run("train_dalle.py", "--config", cfg, "--vae_path", vae_run, "--output", tmp_path / "p", expect=2)
    assert_one_line_error(proc, "unknown keys max_stepz")


def test_folder_training_with_workers_resumes_exactly(tmp_path, vae_run):
    """Random crops come from a per-(epoch, item) generator: workers and resume give the same run."""
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(16):
        Image.new("RGB", (24, 20), (15 * i, 200 - 10 * i, 90)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a picture\ncolour number {i}\n")
    common = [
        "--vae_path",
        vae_run,
        "--image_text_folder",
        folder,
        *DALLE_FLAGS,
        "--batch_size",
        "4",
        "--save_every_n_steps",
        "3",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run("train_dalle.py", "--output", straight, "--max_steps", "6", "--num_workers", "2", *common)
    run("train_dalle.py", "--output", split, "--max_steps", "3", *common)
    run("train_dalle.py", "--output", split, "--max_steps", "6", "--resume", *common)
    a, b = weights(straight / "final"), weights(split / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flops_profiler_prints_tables_and_stops(tmp_path, vae_run):
    """Without DeepSpeed: torch.profiler's operator times, then forward FLOPs per module (exact for a
    linear layer: 2 x tokens x in x out), and no checkpoint."""
    out = tmp_path / "prof"
    proc = run("train_dalle.py", "--vae_path", vae_run, "--output", out, "--flops_profiler", *DALLE_FLAGS)
    assert "time per operator in one training step" in proc.stdout and "aten::mm" in proc.stdout
    rows = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.startswith("transformer."))
    tokens = 8 * (24 + 1 + 16 - 1)  # batch x (bos + text + 4x4 image tokens - the last, never an input)
    assert float(rows["transformer.ffs.0.fn.proj_in"]) * 1e6 == pytest.approx(2 * tokens * 32 * 256, rel=1e-3)
    assert "stopped (no checkpoint)" in proc.stdout and not (out / "final").exists()


def test_generate_in_bf16(tmp_path, dalle_run):
    """--bf16 samples with bf16 weights and cache (the VAE stays fp32) and writes the same layout; --amp
    samples as --bf16 does on a CPU with bf16 arithmetic and as fp32 on one that would emulate it."""
    from dalle_dist.devices import cpu_computes_bf16

    images = {}
    for precision in ("--bf16", "--amp", None):
        out = tmp_path / f"outputs{precision}"
        flags = ["--num_images", "2", "--outputs_dir", out, "--seed", "1", "--cond_scale", "2"]
        proc = run(
            "generate.py",
            "--dalle_path",
            dalle_run,
            "--text",
            "a red circle",
            *flags,
            *[precision] * bool(precision),
        )
        assert Image.open(out / "a_red_circle" / "1.png").size == (16, 16)
        images[precision] = [np.asarray(Image.open(out / "a_red_circle" / f"{i}.png")) for i in range(2)]
        assert ("--bf16: this CPU has no bf16 arithmetic" in proc.stdout) == (
            precision == "--bf16" and not cpu_computes_bf16()
        )
    assert any(not np.array_equal(a, b) for a, b in zip(images["--bf16"], images[None], strict=True))
    same_as = images["--bf16"] if cpu_computes_bf16() else images[None]
    assert all(np.array_equal(a, b) for a, b in zip(images["--amp"], same_as, strict=True))


@pytest.mark.slow
def test_generate_compiled_writes_the_same_images(tmp_path, dalle_run):
    """--compile runs the decode step through torch.compile: the same seed gives the same images."""
    images = {}
    for compiled in (False, True):
        out = tmp_path / f"compiled_{compiled}"
        flags = ["--num_images", "2", "--outputs_dir", out, "--seed", "1", "--cond_scale", "2"]
        run(
            "generate.py",
            "--dalle_path",
            dalle_run,
            "--text",
            "a red circle",
            *flags,
            *["--compile"] * compiled,
        )
        images[compiled] = [np.asarray(Image.open(out / "a_red_circle" / f"{i}.png")) for i in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(images[False], images[True], strict=True))


def test_final_samples_are_drawn_once(tmp_path):
    """Samples at the last step when --sample_every divides --max_steps, and not a second time at the end."""
    out = tmp_path / "vae"
    proc = run("train_vae.py", "--output", out, "--max_steps", "4", *VAE_FLAGS)  # VAE_FLAGS: sample every 4
    assert proc.stdout.count("step 4: samples in") == 1, proc.stdout
    assert len(list((out / "samples").iterdir())) == 1


def test_the_last_steps_samples_are_drawn_once(tmp_path):
    """--sample_every dividing --max_steps: the step's grid is the final one, not drawn a second time."""
    out = tmp_path / "vae"
    proc = run(
        "train_vae.py", *TINY_VAE.split(), "--max_steps", "4", "--sample_every", "2", "--output", str(out)
    )
    drawn = [line for line in proc.stdout.splitlines() if ": samples in " in line]
    assert [line.split(":")[0] for line in drawn] == ["step 2", "step 4"], proc.stdout
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [
        "vae-step-00000002.png",
        "vae-step-00000004.png",
    ]
