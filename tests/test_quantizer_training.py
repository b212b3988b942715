"""train_vae.py --quantizer with real processes: the flags, resume, the log's figures, and 2-rank DDP against
one process with the EMA codebook (its counts and sums are summed over the ranks before each EMA step, so
2 ranks x batch 4 update the codebook as 1 process x batch 8 does)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_VAE, launch_2_ranks, noise_folder, run_cmd
from safetensors.torch import load_file

from dalle_dist.plot import panels, read_metrics

TINY = TINY_VAE.replace("--num_tokens 32 ", "").split()  # each quantizer's codebook is set below
VAE = [sys.executable, str(ROOT / "train_vae.py"), *TINY]
# exact comparisons: k-means and dead-code restarts draw random vectors (the ranks draw the same ones, one
# process others), so they are off where a run is compared with another launch
EXACT_VQ = ["--quantizer", "vq", "--no_kmeans_init", "--dead_code_threshold", "0", "--num_tokens", "32"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_each_quantizer_trains_logs_and_resumes(tmp_path):
    codebooks = {"vq": ["--num_tokens", "32"], "fsq": ["--fsq_levels", "4,4,3"], "lfq": ["--lfq_bits", "5"]}
    for q, extra in codebooks.items():
        out = tmp_path / q
        flags = ["--quantizer", q, *extra, "--log_every", "1", "--save_every_n_steps", "2"]
        run_cmd([*VAE, "--output", out, "--max_steps", "2", *flags])
        meta = json.loads((out / "final" / "meta.json").read_text())
        assert meta["vae"]["config"]["quantizer"] == q
        rows = [r for r in records(out) if "codebook_used" in r]
        assert len(rows) == 2 and all(0 < r["codebook_used"] <= 1 for r in rows)
        assert ("codes_restarted" in rows[0]) == (q == "vq") and "temperature" not in rows[0]
        run_cmd([*VAE, "--output", out, "--max_steps", "4", *flags, "--resume"])
        assert [r["step"] for r in records(out) if "codebook_used" in r] == [1, 2, 3, 4]
    proc = run_cmd(
        [*VAE, "--output", tmp_path / "vq", "--max_steps", "6", "--resume", "--quantizer", "fsq"], 2
    )
    assert "--quantizer fsq (it has vq)" in proc.stderr


def test_held_out_psnr_is_logged_and_plotted(tmp_path):
    """--validation_fraction holds out pictures; each evaluation logs their reconstruction error through the
    hard codes and its PSNR, and python -m dalle_dist.plot draws a panel for each tokenizer figure."""
    out = tmp_path / "vq"
    flags = ["--quantizer", "vq", "--num_tokens", "32", "--validation_fraction", "0.25", "--eval_every", "2"]
    proc = run_cmd([*VAE, "--output", out, "--max_steps", "4", "--log_every", "1", *flags])
    assert "step 2: validation loss" in proc.stdout and ", psnr " in proc.stdout
    rows = [r for r in records(out) if "val_psnr" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert 0 < r["val_recon_mse"] < 1
        assert r["val_psnr"] == pytest.approx(-10 * math.log10(r["val_recon_mse"]))
    drawn = dict(panels(read_metrics(out)))
    assert drawn["held-out PSNR dB"] == ["val_psnr"] and drawn["codes restarted"] == ["codes_restarted"]
    assert drawn["codebook used"] == ["codebook_used"] and drawn["perplexity"] == ["codebook_perplexity"]
    run_cmd([sys.executable, "-m", "dalle_dist.plot", out])
    assert (out / "curves.png").is_file()


def test_train_vae_reads_shards(tmp_path):
    """--wds: the shards train_dalle.py reads (captions unused), --wds_val validates on others."""
    import shutil

    from dalle_dist.data.make_shards import make_shards

    make_shards(noise_folder(tmp_path / "folder", 12, side=20), tmp_path / "shards", maxcount=5)
    shutil.copytree(tmp_path / "shards", tmp_path / "val")
    out = tmp_path / "vae"
    flags = ["--wds", "png,txt", "--image_folder", tmp_path / "shards", "--wds_val", tmp_path / "val"]
    flags += ["--quantizer", "fsq", "--fsq_levels", "4,4,3", "--batch_size", "4", "--eval_every", "2"]
    run_cmd([*VAE, "--output", out, "--max_steps", "4", *flags])
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["data"]["kind"] == "shards" and meta["data"]["count"] == 12
    assert [r["step"] for r in records(out) if "val_psnr" in r] == [2, 4]
    proc = run_cmd(
        [*VAE, "--output", tmp_path / "x", "--wds", "png,txt", "--image_folder", tmp_path / "no"], 2
    )
    assert "Traceback" not in proc.stderr and "no does not exist" in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--quantizer", "vq", "--fsq_levels", "8,5"], "--fsq_levels does not apply to --quantizer vq"),
        (
            ["--codebook_dim", "8", "--lfq_bits", "4"],
            "--codebook_dim, --lfq_bits do not apply to --quantizer gumbel",
        ),
        (["--quantizer", "lfq", "--num_tokens", "100"], "power-of-2 num_tokens"),
        (["--quantizer", "fsq", "--fsq_levels", "8,x"], "expected comma-separated integers"),
        (["--quantizer", "fsq", "--fsq_levels", "8,2"], "integers >= 3"),
        (
            ["--quantizer", "fsq", "--no-fsq_symmetric", "--fsq_noise_dropout", "0.5"],
            "needs symmetric levels",
        ),
        (
            ["--quantizer", "vq", "--fsq_noise_dropout", "0"],
            "--fsq_noise_dropout does not apply to --quantizer vq",
        ),
        (["--quantizer", "fsq", "--fsq_noise_dropout", "1"], "--fsq_noise_dropout"),
        (
            ["--quantizer", "fsq", "--fsq_levels", "8,8,8,8,8", "--fsq_entropy_weight", "0.1"],
            "--fsq_entropy_weight works up to 16384 codes, not 32768",
        ),
    ],
)
def test_bad_quantizer_flags_are_one_line(tmp_path, flags, message):
    proc = run_cmd([*VAE, "--output", tmp_path / "out", "--max_steps", "1", *flags], expect=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.slow
def test_ddp_vq_equals_single_process(tmp_path):
    """The EMA codebook (buffers, not gradients) of 2 ranks equals one process's; with k-means and restarts
    on, the ranks' codebooks stay identical."""
    common = ["--max_steps", "4", "--log_every", "1", "--sample_every", "100", "--save_every_n_steps", "1"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_cmd([*VAE, "--output", single, "--batch_size", "8", *EXACT_VQ, *common])
    proc = run_cmd(
        launch_2_ranks("torchrun", "train_vae.py", *TINY, "--output", ddp, "--batch_size", "4",
                       *EXACT_VQ, *common)
    )  # fmt: skip
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    a, b = load_file(single / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    ema = [k for k in a if k.endswith(("cluster_size", "embed_avg", "embed"))]
    assert len(ema) == 3, sorted(a)
    start = load_file(single / "checkpoints" / "step-00000001" / "model.safetensors")
    assert all(not torch.equal(start[k], a[k]) for k in ema), "the EMA codebook moved"
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    restarts = tmp_path / "restarts"
    proc = run_cmd(
        launch_2_ranks("torchrun", "train_vae.py", *TINY, "--output", restarts, "--batch_size",
                       "4", "--quantizer", "vq", "--num_tokens", "256", "--dead_code_threshold", "2", *common)
    )  # fmt: skip
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    assert [r["codes_restarted"] for r in records(restarts) if "codes_restarted" in r][-1] > 0


def test_ddp_fsq_entropy_equals_single_process(tmp_path):
    """FSQ's entropy term reads the batch's mean code distribution: under DDP it is averaged over the ranks
    (with its gradient), so 2 ranks x batch 4 train as 1 process x batch 8 does."""
    common = ["--max_steps", "3", "--log_every", "1", "--sample_every", "100", "--quantizer", "fsq"]
    common += ["--fsq_levels", "4,4,3", "--fsq_entropy_weight", "1.0", "--learning_rate", "0.01"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_cmd([*VAE, "--output", single, "--batch_size", "8", *common])
    proc = run_cmd(
        launch_2_ranks("torchrun", "train_vae.py", *TINY, "--output", ddp, "--batch_size", "4", *common)
    )
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    a, b = load_file(single / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.slow
def test_deepspeed_vq_equals_single_process(tmp_path):
    """Under the deepspeed launcher (which starts torch.distributed) the EMA codebook is summed over the
    ranks too: 2 ranks x batch 4 with ZeRO-2 equal 1 process x batch 8, buffers included."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
    common = ["--max_steps", "3", "--log_every", "1", "--sample_every", "100", *EXACT_VQ]
    single, ds = tmp_path / "single", tmp_path / "ds"
    run_cmd([*VAE, "--output", single, "--batch_size", "8", *common])
    proc = run_cmd(
        launch_2_ranks("deepspeed", "train_vae.py", *TINY, "--output", ds, "--batch_size", "4",
                       "--deepspeed", "--zero_stage", "2", *common)
    )  # fmt: skip
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    assert json.loads((ds / "final" / "meta.json").read_text())["engine"]["backend"] == "deepspeed"
    a, b = load_file(single / "final" / "model.safetensors"), load_file(ds / "final" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.endswith("embed_avg") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_bf16_vae_training_resumes_exactly(tmp_path):
    """--bf16 (channels-last VAE, bf16 autocast): 4 steps equal 2 + 2 resumed, and the weights load as any."""
    flags = ["--quantizer", "vq", "--num_tokens", "32", "--bf16", "--save_every_n_steps", "2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cmd([*VAE, "--output", straight, "--max_steps", "4", *flags])
    run_cmd([*VAE, "--output", split, "--max_steps", "2", *flags])
    run_cmd([*VAE, "--output", split, "--max_steps", "4", *flags, "--resume"])
    a, b = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(split / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype != torch.bfloat16 for v in a.values()), "weights stay fp32"
