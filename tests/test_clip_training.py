"""train_clip.py end to end at tiny sizes: run layout, a self-describing checkpoint that load_clip reads,
resume equal to an uninterrupted run, folders and shards as data, and bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, noise_folder, run_cmd, small_vae
from safetensors.torch import load_file

from dalle_dist import CLIP
from dalle_dist.checkpoint import load_clip, save_checkpoint
from dalle_dist.data.make_shards import make_shards
from dalle_dist.errors import UserError
from dalle_dist.training import clip_job

TINY_CLIP = (
    "--dim_text 32 --dim_image 32 --dim_latent 8 --text_enc_depth 1 --visual_enc_depth 1 --text_heads 2 "
)
TINY_CLIP += "--visual_heads 2 --dim_head 16 --text_seq_len 24 --image_size 16 --visual_patch_size 4 "
TINY_CLIP += "--dataset_size 64 --batch_size 8 --bpe_vocab_size 300 --log_every 2 --sample_every 3"
FLAGS = TINY_CLIP.split()


def run(*args, expect: int = 0) -> subprocess.CompletedProcess:
    return run_cmd([sys.executable, ROOT / "train_clip.py", *args, *FLAGS], expect)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "straight"
    proc = run("--output", out, "--max_steps", "6", "--save_every_n_steps", "3")
    assert "CLIP trained" in proc.stdout
    return out


def test_run_writes_a_self_describing_clip_checkpoint(straight):
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    meta = json.loads((straight / "final" / "meta.json").read_text())
    assert meta["kind"] == "clip" and meta["step"] == 6 and meta["data"]["kind"] == "shapes"
    assert meta["model"]["dim_latent"] == 8 and meta["model"]["visual_image_size"] == 16
    assert set(meta["checksums"]) == {"model.safetensors", "tokenizer.json"}
    # a retrieval sample: the image grid and, per image, the caption ranked first
    samples = sorted((straight / "samples").glob("clip-step-*.txt"))
    assert samples and "ranked their own caption first" in samples[0].read_text()
    assert samples[0].with_suffix(".png").is_file()
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(np.isfinite(losses))


def test_load_clip_rebuilds_the_trained_model(straight):
    clip, tokenizer, ckpt = load_clip(straight)
    assert isinstance(clip, CLIP) and ckpt.path == straight / "final" and ckpt.step == 6
    assert clip.temperature.shape == (1,)
    assert tokenizer.vocab_size == ckpt.meta["model"]["num_text_tokens"]
    saved = weights(straight)
    assert all(torch.equal(saved[k].reshape(v.shape), v) for k, v in clip.state_dict().items())
    # it embeds what it was trained on: captions through its own tokenizer, 16 px images
    text = tokenizer.tokenize(["a red circle"], clip.text_seq_len)
    with torch.no_grad():
        latents = clip.embed_text(text), clip.embed_image(torch.rand(1, 3, 16, 16))
    assert all(x.shape == (1, 8) for x in latents)
    step3, _, _ = load_clip(straight / "checkpoints" / "step-00000003")  # a step folder loads too
    assert any(not torch.equal(v, clip.state_dict()[k]) for k, v in step3.state_dict().items())


def test_resume_continues_exactly(tmp_path, straight):
    """Three steps, then --resume to six, equals six steps straight (weights, bit for bit)."""
    split = tmp_path / "split"
    run("--output", split, "--max_steps", "3", "--save_every_n_steps", "3")
    proc = run("--output", split, "--max_steps", "6", "--save_every_n_steps", "3", "--resume")
    assert "resuming" in proc.stdout and "step 3" in proc.stdout
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trains_on_a_folder_and_on_shards(tmp_path):
    folder = noise_folder(tmp_path / "folder", 8)
    make_shards(folder, tmp_path / "shards", maxcount=4)
    common = [*FLAGS, "--max_steps", "2", "--batch_size", "4", "--random_resize_crop_lower_ratio", "1"]
    sources = {
        "folder": ["--image_text_folder", folder],
        "shards": ["--image_text_folder", tmp_path / "shards", "--wds", "png,txt"],
    }
    for kind, source in sources.items():
        out = tmp_path / kind
        assert clip_job.main([*map(str, source), "--output", str(out), *common]) == 0
        assert json.loads((out / "final" / "meta.json").read_text())["data"]["kind"] == kind
        load_clip(out)


def test_trains_under_deepspeed(tmp_path):
    """One process under the DeepSpeed engine (it broadcasts every parameter, the temperature included)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
    run("--output", tmp_path / "ds", "--max_steps", "2", "--deepspeed")
    clip, _, ckpt = load_clip(tmp_path / "ds")
    assert ckpt.meta["engine"]["format"] != "torch" and clip.temperature.shape == (1,)


def test_load_clip_refuses_another_kind_of_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "vae", kind="vae", meta={"vae": {"kind": "discrete"}}, module=small_vae())
    with pytest.raises(UserError, match=r"is a VAE checkpoint, but --clip_path needs a CLIP one"):
        load_clip(tmp_path / "vae")
    with pytest.raises(UserError, match="does not exist"):
        load_clip(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--batch_size", "1"], ["--batch_size 1", "at least 2 pairs"]),
        (["--visual_patch_size", "5"], ["--visual_patch_size", "divisible"]),
        (["--resume"], ["--resume needs --output"]),
        (["--resume", "--output", "{tmp}/empty"], ["no checkpoint to resume from"]),
        (["--image_text_folder", "{tmp}/missing"], ["does not exist"]),
        (["--bpe_path", "{tmp}/missing.json"], ["--bpe_path", "does not exist"]),
        (["--hug"], ["--hug", "--bpe_path"]),
        (["--text_seq_len", "4"], ["more than the limit of 4", "--truncate_captions"]),
    ],
    ids=[
        "batch_of_one",
        "patch_size",
        "resume_no_output",
        "resume_empty",
        "missing_folder",
        "missing_bpe",
        "hug_alone",
        "long_captions",
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, words):
    argv = [*FLAGS, "--max_steps", "1", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    if "--resume" not in args:
        argv += ["--output", str(tmp_path / "run")]
    assert clip_job.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("launcher", ["torchrun", "fsdp", "horovodrun"])
def test_two_ranks_contrast_the_global_batch(tmp_path, straight, launcher):
    """2 ranks x 4 pairs rank each caption against all 8 images (latents gathered across ranks, gradients
    flowing back): the weights equal 1 process x 8 pairs (the module's straight run), under DDP, FSDP2
    (both transformers' branches sharded) and Horovod."""
    from conftest import launch_2_ranks

    extra = []
    if launcher == "fsdp":
        launcher, extra = "torchrun", ["--distributed_backend", "fsdp"]
    if launcher == "horovodrun":
        pytest.importorskip("horovod.torch", reason="Horovod is not installed (make install-dev builds it)")
    flags = [*FLAGS, "--output", tmp_path / "two", "--max_steps", "6", "--save_every_n_steps", "3", *extra]
    flags[flags.index("--batch_size") + 1] = "4"
    proc = run_cmd(launch_2_ranks(launcher, "train_clip.py", *flags))
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    one, two = weights(straight), weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=2e-5, rtol=1e-4, msg=key)
