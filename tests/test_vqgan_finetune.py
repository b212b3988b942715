"""train_vae.py --vqgan_model_path / --vqgan_config_path: a Taming VQGAN fine-tuned by our trainer (with
--gan), saved as our own checkpoint that DALL-E reads."""

from __future__ import annotations

import json
import sys

import torch
from conftest import ROOT, run_cmd, small_dalle
from safetensors.torch import load_file
from test_pretrained import _taming_files

from dalle_dist.checkpoint import load_vae
from dalle_dist.models.vqgan import VQGAN

TRAIN = [sys.executable, str(ROOT / "train_vae.py"), "--dataset_size", "64", "--batch_size", "4"]
TRAIN += ["--log_every", "1", "--sample_every", "100"]


def test_finetune_a_taming_vqgan_then_dalle_reads_it(tmp_path):
    net, ckpt, cfg = _taming_files(tmp_path)
    files = ["--vqgan_model_path", ckpt, "--vqgan_config_path", cfg]
    still = tmp_path / "still"
    run_cmd([*TRAIN, "--output", still, "--max_steps", "1", "--learning_rate", "1e-9", *files])
    weights = load_file(still / "final" / "model.safetensors")
    taming = net.state_dict()
    assert weights.keys() == {f"model.{k}" for k in taming}
    for key, value in taming.items():  # it started from the Taming weights
        torch.testing.assert_close(weights[f"model.{key}"], value, atol=1e-5, rtol=0)
    out = tmp_path / "tuned"
    run_cmd([*TRAIN, "--output", out, "--max_steps", "3", *files, "--gan", "--disc_start", "1"])
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["vae"]["kind"] == "vqgan" and meta["gan"]["start"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["codebook_used"] > 0 for r in rows if "loss" in r] == [True] * 3
    assert [r["gan_weight"] > 0 for r in rows if "loss" in r] == [False, True, True]
    vae, _ = load_vae(out)
    assert isinstance(vae, VQGAN) and (vae.image_size, vae.num_tokens, vae.image_seq_len) == (32, 64, 64)
    tuned = vae.state_dict()
    assert any(not torch.equal(tuned[f"model.{k}"], v) for k, v in taming.items()), "it trained"
    images = torch.rand(2, 3, 32, 32)
    ids = vae.get_codebook_indices(images)
    assert ids.shape == (2, 64) and vae.denormalize(vae.decode(ids)).shape == (2, 3, 32, 32)
    dalle = small_dalle(vae)
    loss = dalle(torch.randint(1, 50, (2, 6)), images, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None for p in vae.parameters())
    assert dalle.generate_images(torch.randint(1, 50, (1, 6))).shape == (1, 3, 32, 32)


def test_finetune_refusals(tmp_path):
    _, ckpt, cfg = _taming_files(tmp_path)
    cases = [
        (["--vqgan_model_path", ckpt], "needs both --vqgan_model_path and --vqgan_config_path"),
        (["--vqgan_model_path", ckpt, "--vqgan_config_path", cfg, "--num_tokens", "64"], "--num_tokens: the"),
        (["--vqgan_model_path", ckpt, "--vqgan_config_path", cfg, "--image_size", "64"], "built for 32 px"),
        (["--vqgan_model_path", tmp_path / "x.ckpt", "--vqgan_config_path", cfg], "x.ckpt"),
    ]
    for flags, message in cases:
        proc = run_cmd([*TRAIN, "--output", tmp_path / "out", "--max_steps", "1", *flags], expect=2)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    gumbel = tmp_path / "gumbel"
    gumbel.mkdir()
    _, gckpt, gcfg = _taming_files(gumbel, gumbel=True)
    flags = ["--vqgan_model_path", gckpt, "--vqgan_config_path", gcfg]
    proc = run_cmd([*TRAIN, "--output", tmp_path / "g", *flags], expect=2)
    assert "describes a Gumbel VQGAN" in proc.stderr
