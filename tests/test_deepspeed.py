"""DeepSpeed with real processes: the `deepspeed` launcher and torchrun, 2 ranks, gloo on this CPU machine.

Each launch asserts several things at once (CI time): ranks bit-identical (the loop checks and logs it),
equality with one process on the same global batches, the checkpoint layout, and what generate.py loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    TINY_DALLE,
    TINY_VAE,
    assert_same_weights,
    launch_2_ranks,
    run_cmd,
    run_weights,
)

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")


DALLE_FLAGS = [*TINY_DALLE.split(), "--save_every_n_steps", "3", "--log_every", "1", "--sample_every", "100"]


def run(cmd: list, expect: int = 0) -> subprocess.CompletedProcess:
    return run_cmd(cmd, expect)  # one thread per rank: the launcher does not set it


def deepspeed_launch(script: str, *args) -> list:
    return launch_2_ranks("deepspeed", script, *args)


def torchrun_launch(script: str, *args) -> list:
    return launch_2_ranks("torchrun", script, *args)


def single(script: str, *args) -> list:
    return [sys.executable, ROOT / script, *args]


def shm_segments() -> set[str]:
    """DeepSpeed's shared-memory all-reduce segments present in /dev/shm."""
    return {p.name for p in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")}


weights, assert_same = run_weights, assert_same_weights


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "vae"
    run(single("train_vae.py", "--output", out, "--max_steps", "2", *TINY_VAE.split()))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vae_run) -> Path:
    """One process, batch 8, fp32: what every 2-rank x batch 4 run must reproduce."""
    out = tmp_path_factory.mktemp("ds") / "single"
    run(
        single(
            "train_dalle.py",
            "--vae_path",
            vae_run,
            "--output",
            out,
            "--batch_size",
            "8",
            "--max_steps",
            "6",
            *DALLE_FLAGS,
        )
    )
    return out


def dalle_flags(vae_run: Path, out: Path, *extra) -> list:
    return [
        "--vae_path",
        vae_run,
        "--output",
        out,
        "--batch_size",
        "4",
        "--max_steps",
        "6",
        *DALLE_FLAGS,
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "stage"), [("deepspeed", 1), ("torchrun", 2), ("deepspeed", 3), ("torchrun", 0)]
)
def test_zero_stages_equal_single_process(tmp_path, vae_run, reference, launcher, stage):
    out = tmp_path / f"zero{stage}"
    segments_before = shm_segments()
    if launcher == "deepspeed":  # the backend is inferred from the deepspeed launcher's environment
        proc = run(deepspeed_launch("train_dalle.py", *dalle_flags(vae_run, out, "--zero_stage", stage)))
    else:
        proc = run(
            torchrun_launch(
                "train_dalle.py", *dalle_flags(vae_run, out, "--deepspeed", "--zero_stage", stage)
            )
        )
    assert "batch 4 x 2 ranks" in proc.stdout
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    assert proc.stdout.count("DALL-E trained") == 1, "only the root rank reports"
    assert_same(weights(reference), weights(out))
    # DeepSpeed's CPU all-reduce never unlinks its /dev/shm segments (~66 MB a rank): the backend does
    assert shm_segments() == segments_before
    # every checkpoint holds the portable weights next to DeepSpeed's own files (one optimizer shard per
    # rank when ZeRO partitions it), and meta.json says how it was trained
    step3 = out / "checkpoints" / "step-00000003"
    assert_same(weights(reference, "step-00000003"), weights(out, "step-00000003"))
    meta = json.loads((step3 / "meta.json").read_text())
    assert meta["engine"] == {
        "format": "deepspeed",
        "backend": "deepspeed",
        "world_size": 2,
        "zero_stage": stage,
        "precision": "fp32",
    }
    shards = sorted(p.name for p in (step3 / "engine" / "state").glob("*optim_states.pt"))
    assert len(shards) == (2 if stage > 0 else 0), shards
    assert any(name.startswith("engine/state/") for name in meta["checksums"])
    if stage == 3:
        # generate.py reads a ZeRO-3 run directly: no export step
        gen = run(
            single(
                "generate.py",
                "--dalle_path",
                out,
                "--text",
                "red circle",
                "--num_images",
                "2",
                "--outputs_dir",
                tmp_path / "gen",
            )
        )
        assert "loaded" in gen.stdout and (tmp_path / "gen" / "red_circle" / "grid.png").is_file()


@pytest.mark.slow
def test_bf16_and_gradient_accumulation(tmp_path, vae_run, reference):
    """bf16 (ZeRO-2): ranks identical; the fp32 master weights follow the fp32 run closely. ga_steps 2 with
    2 ranks x 4 equals one process with the same accumulation windows (fp32)."""
    bf16 = tmp_path / "bf16"
    proc = run(
        deepspeed_launch(
            "train_dalle.py", *dalle_flags(vae_run, bf16, "--deepspeed", "--zero_stage", "2", "--bf16")
        )
    )
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    # bf16 rounds activations and gradients to 8 bits of mantissa (relative error 2^-8 = 0.4% per
    # operation): each step's loss stays within 2% of the fp32 run's, and the fp32 master weights move by
    # about as much as fp32's do (steps 3 -> 6)
    losses = [
        [
            r["loss"]
            for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r
        ]
        for run_dir in (reference, bf16)
    ]
    assert len(losses[0]) == len(losses[1]) == 6
    for fp32_loss, bf16_loss in zip(*losses, strict=True):
        assert abs(bf16_loss - fp32_loss) < 0.02 * fp32_loss, losses
    ref, ref3, got, got3 = (weights(r, w) for r in (reference, bf16) for w in ("final", "step-00000003"))
    moved_fp32 = torch.cat([(ref[k] - ref3[k]).flatten() for k in ref]).norm()
    moved_bf16 = torch.cat([(got[k] - got3[k]).flatten() for k in got]).norm()
    assert 0.5 < moved_bf16 / moved_fp32 < 2, (moved_bf16, moved_fp32)
    assert all(v.dtype == torch.float32 for v in got.values() if v.is_floating_point()), "exported as fp32"

    ga_single, ga_ds = tmp_path / "ga_single", tmp_path / "ga_ds"
    common = ["--vae_path", vae_run, "--max_steps", "3", "--ga_steps", "2", *DALLE_FLAGS]
    run(single("train_dalle.py", "--output", ga_single, "--batch_size", "8", *common))
    run(torchrun_launch("train_dalle.py", "--output", ga_ds, "--batch_size", "4", "--deepspeed", *common))
    assert_same(weights(ga_single), weights(ga_ds))


@pytest.mark.slow
def test_resume_same_and_other_world_size(tmp_path, vae_run):
    """ZeRO-2, 2 ranks: stopped at step 3 and resumed equals an uninterrupted run, both on 2 ranks and on 1
    rank reading the same global batches (DeepSpeed's universal checkpoint, converted on resume)."""
    straight, split, one = tmp_path / "straight", tmp_path / "split", tmp_path / "one"
    ds = ["--deepspeed", "--zero_stage", "2"]
    run(torchrun_launch("train_dalle.py", *dalle_flags(vae_run, straight, *ds)))
    run(deepspeed_launch("train_dalle.py", *dalle_flags(vae_run, split, *ds, "--max_steps", "3")))
    subprocess.run(["cp", "-r", str(split), str(one)], check=True)
    proc = run(deepspeed_launch("train_dalle.py", *dalle_flags(vae_run, split, *ds, "--resume")))
    assert "resuming" in proc.stdout
    assert_same(weights(straight), weights(split), atol=1e-6)

    flags = dalle_flags(vae_run, one, *ds, "--resume")
    flags[flags.index("--batch_size") + 1] = "8"
    proc = run(single("train_dalle.py", *flags))
    assert "converting it to DeepSpeed's universal format" in proc.stdout
    assert_same(weights(straight), weights(one))
    assert not list(one.glob("checkpoints/.universal-*")), "the converted copy is removed"

    # the trap users fall into: resuming without the engine that wrote the state, and changing ZeRO 2 -> 3
    plain = run(
        single("train_dalle.py", *dalle_flags(vae_run, one, "--resume", "--max_steps", "9")), expect=2
    )
    assert "written by deepspeed (ZeRO-2, 1 rank): resume it with --deepspeed" in plain.stderr
    assert "Traceback" not in plain.stderr
    stage = run(
        single(
            "train_dalle.py",
            *dalle_flags(vae_run, one, "--deepspeed", "--zero_stage", "3", "--resume", "--max_steps", "9"),
        ),
        expect=2,
    )
    assert "trained with ZeRO-2: resume it with --zero_stage 2" in stage.stderr


def shm_segment(tag: str, age_s: float) -> Path:
    """A file in /dev/shm named as DeepSpeed names its all-reduce segments, last written ``age_s`` ago."""
    from dalle_dist.distributed.deepspeed import SHM_PREFIX

    path = Path("/dev/shm") / f"{SHM_PREFIX}{os.getuid()}_{tag}"
    path.write_bytes(bytes(4096))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_stale_shm_segments_go_and_live_or_young_ones_stay(tmp_path):
    """Segments of killed jobs are removed; one a live process maps, or one just created, is not."""
    from dalle_dist.distributed.deepspeed import remove_stale_shm_segments

    stale = shm_segment(f"test{os.getpid()}_2_0", age_s=3600)
    live = shm_segment(f"test{os.getpid()}_2_1", age_s=3600)
    young = shm_segment(f"test{os.getpid()}_2_2", age_s=0)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import mmap, sys, time; f = open(sys.argv[1], 'r+b'); "
         "m = mmap.mmap(f.fileno(), 4096); print('mapped', flush=True); time.sleep(60)", str(live)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "mapped"
        removed = [path for path, _ in remove_stale_shm_segments()]
        assert stale in removed and live not in removed and young not in removed
        assert not stale.exists() and live.exists() and young.exists()
    finally:
        holder.kill()
        holder.wait()
        live.unlink(missing_ok=True)
        young.unlink(missing_ok=True)


def test_deepspeed_flags_and_bad_input(tmp_path, vae_run):
    """One process (no launcher): --deepspeed_config overrides the flags; the reverse trap; bad config files;
    fp16 on a CPU names bf16."""
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 2}))
    out = tmp_path / "cfg"
    stale = shm_segment(f"test{os.getpid()}_1_0", age_s=3600)  # what a job killed early left behind
    proc = run(
        single(
            "train_dalle.py",
            *dalle_flags(vae_run, out, "--deepspeed", "--deepspeed_config", config, "--max_steps", "2"),
        )
    )
    assert "batch 2 x 1 ranks" in proc.stdout
    assert "left by jobs killed before they started: " in proc.stdout and stale.name in proc.stdout
    assert not stale.exists()
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["engine"]["zero_stage"] == 2 and (out / "final" / "engine" / "state").is_dir()

    plain = tmp_path / "plain"
    run(single("train_dalle.py", *dalle_flags(vae_run, plain, "--max_steps", "2")))
    proc = run(
        single("train_dalle.py", *dalle_flags(vae_run, plain, "--deepspeed", "--resume", "--max_steps", "3")),
        expect=2,
    )
    assert "written without DeepSpeed" in proc.stderr and "Traceback" not in proc.stderr

    # --flops_profiler under DeepSpeed is DeepSpeed's profiler: its per-module table, then a stop
    prof = tmp_path / "prof"
    proc = run(single("train_dalle.py", *dalle_flags(vae_run, prof, "--deepspeed", "--flops_profiler")))
    assert "DeepSpeed Flops Profiler" in proc.stdout and "(transformer): Transformer(" in proc.stdout
    assert "stopped (no checkpoint)" in proc.stdout and not (prof / "final").exists()

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for extra, message in [
        (["--deepspeed_config", bad], "is not valid JSON"),
        (["--deepspeed_config", tmp_path / "missing.json"], "does not exist"),
        (["--fp16"], "use --bf16"),
        (["--zero_stage", "0", "--cpu_offload"], "--cpu_offload needs ZeRO stage 1, 2 or 3"),
    ]:
        proc = run(
            single("train_dalle.py", *dalle_flags(vae_run, tmp_path / "x", "--deepspeed", *extra)), expect=2
        )
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_vae_amp_and_cpu_offload(tmp_path):
    """train_vae.py under DeepSpeed with --amp --bf16 (DeepSpeed's torch_autocast section) and ZeRO-2 with the
    optimizer state offloaded to CPU memory: trains, ranks identical, resumable portable result."""
    out = tmp_path / "vae"
    flags = ["--output", out, "--max_steps", "4", *TINY_VAE.split(), "--batch_size", "4", "--deepspeed"]
    proc = run(
        deepspeed_launch("train_vae.py", *flags, "--amp", "--bf16", "--zero_stage", "2", "--cpu_offload")
    )
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["engine"]["precision"] == "bf16" and meta["kind"] == "vae"
    gen = run(
        single(
            "train_dalle.py", "--vae_path", out, "--output", tmp_path / "d", "--max_steps", "1", *DALLE_FLAGS
        )
    )
    assert "DALL-E trained" in gen.stdout
