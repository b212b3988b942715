"""train_prior.py and train_decoder.py end to end at tiny sizes (issue [3/6]): real processes on a trained
CLIP, checkpoints that DALLE2 samples from, an exact resume, 2 ranks under torchrun equal to one process,
and bad input as one line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, launch_2_ranks, run_cmd
from PIL import Image
from safetensors.torch import load_file

pytest.importorskip("diffusers", reason="diffusers is a dependency of dalle_dist: pip install -e .")

CLIP = "--dim_text 32 --dim_image 32 --dim_latent 16 --text_enc_depth 1 --visual_enc_depth 1 --text_heads 2 "
CLIP += "--visual_heads 2 --dim_head 16 --text_seq_len 24 --image_size 16 --visual_patch_size 4 "
CLIP += "--dataset_size 64 --batch_size 8 --bpe_vocab_size 300 --max_steps 4"
COMMON_TEXT = "--dataset_size 64 --log_every 1 --sample_every 100 --sample_steps 4 --save_every_n_steps 2"
PRIOR = "--dim 32 --depth 2 --heads 2 --timesteps 100"
DECODER = (
    "--dim 16 --dim_mults 1,2 --cond_dim 32 --attention_head_dim 16 --num_image_tokens 2 --timesteps 100"
)
CLIP_FLAGS, COMMON = CLIP.split(), COMMON_TEXT.split()
PART_FLAGS = {"prior": PRIOR.split(), "decoder": DECODER.split()}


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dalle2") / "clip"
    run_cmd([sys.executable, ROOT / "train_clip.py", *CLIP_FLAGS, "--output", out])
    return out


def train(part: str, clip_run: Path, out: Path, *extra, expect: int = 0, launcher: str | None = None):
    args = ["--clip_path", clip_run, *PART_FLAGS[part], *COMMON, "--output", out, *extra]
    if launcher is None:
        return run_cmd([sys.executable, ROOT / f"train_{part}.py", *args], expect=expect)
    return run_cmd(launch_2_ranks(launcher, f"train_{part}.py", *args), expect=expect)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def parts(clip_run, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("parts")
    runs = {}
    for part in ("prior", "decoder"):
        proc = train(part, clip_run, base / part, "--batch_size", "8", "--max_steps", "4")
        assert f"{part} trained:" in proc.stdout
        runs[part] = base / part
    return runs


def test_sampling_uses_the_average_of_the_weights(parts):
    """Checkpoints keep the raw weights (training continues from them) and ema.safetensors; loading for
    sampling takes the average, loading for training the raw ones."""
    from dalle_dist.checkpoint import load_decoder

    raw, ema = weights(parts["decoder"]), load_file(parts["decoder"] / "final" / "ema.safetensors")
    assert ema and set(ema) < set(raw) and not any(k.startswith("clip.") for k in ema)  # trainable only
    sampling, *_ = load_decoder(parts["decoder"])
    training, *_ = load_decoder(parts["decoder"], ema=False)
    key = next(iter(ema))
    assert torch.equal(sampling.state_dict()[key], ema[key]) and torch.equal(
        training.state_dict()[key], raw[key]
    )
    assert not torch.equal(ema[key], raw[key])


def test_the_parts_train_log_their_figures_and_sample_as_dalle2(parts, clip_run):
    from dalle_dist import DALLE2
    from dalle_dist.checkpoint import load_decoder, load_prior

    log = (parts["prior"] / "metrics.jsonl").read_text()
    assert '"cosine"' in log and '"text_cosine"' in log  # beside the loss, every --log_every steps
    prior, _, ckpt = load_prior(parts["prior"])
    decoder, _, _ = load_decoder(parts["decoder"])
    assert Path(ckpt.meta["clip_source"]).resolve() == (clip_run / "final").resolve()
    dalle2 = DALLE2(prior.clip, prior, decoder).val_mode()
    images = dalle2(text=["a red circle", "a blue square"], cf_guidance_scale=2.0, steps=4, prior_steps=4)
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert (parts["decoder"] / "samples" / "decoder-step-00000004.png").is_file()


@pytest.mark.parametrize("part", ["prior", "decoder"])
def test_resume_is_exact(tmp_path, clip_run, parts, part):
    """Stopped at step 2 and resumed to 4: the weights equal the straight 4-step run's, bit for bit."""
    out = tmp_path / "split"
    train(part, clip_run, out, "--batch_size", "8", "--max_steps", "2")
    proc = train(part, clip_run, out, "--batch_size", "8", "--max_steps", "4", "--resume")
    assert "resuming" in proc.stdout
    for name in ("model.safetensors", "ema.safetensors"):  # the weights and their average (--ema_decay)
        straight = load_file(parts[part] / "final" / name)
        resumed = load_file(out / "final" / name)
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), (name, key)


ENGINES = {  # name -> (launcher, flags)
    "torchrun": ("torchrun", []),
    "deepspeed": ("deepspeed", ["--deepspeed", "--zero_stage", "2"]),
    "deepspeed-zero3": ("deepspeed", ["--deepspeed", "--zero_stage", "3", "--ema_decay", "0"]),  # no average
    "horovodrun": ("horovodrun", []),
    # FSDP2: every block sharded, the average sharded with the weights (the prior's blocks compiled too)
    "fsdp": ("torchrun", ["--distributed_backend", "fsdp"]),
}


@pytest.mark.parametrize(
    ("part", "engine"),
    [(part, engine) for part in ("prior", "decoder") for engine in ENGINES if engine != "deepspeed-zero3"]
    + [("decoder", "deepspeed-zero3")],
)
def test_two_ranks_equal_one_process(tmp_path, clip_run, parts, part, engine):
    """2 ranks x 4 samples read the same global batches as 1 x 8, and each sample's noise, step and
    condition dropout come from its own seed: the same weights and the same average of them (--ema_decay),
    within fp32 rounding, under every launcher and engine."""
    launcher, flags = ENGINES[engine]
    if engine == "fsdp" and part == "prior":
        flags = [*flags, "--compile"]  # (the UNet's blocks take minutes to compile: not in a test)
    if launcher == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
    if launcher == "horovodrun":
        pytest.importorskip("horovod.torch", reason="Horovod is not installed (make install-dev builds it)")
    two = tmp_path / "two"
    proc = train(part, clip_run, two, "--batch_size", "4", "--max_steps", "4", *flags, launcher=launcher)
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    if "--compile" in flags:
        assert "--compile: 0 graphs" not in proc.stdout and "graphs compiled" in proc.stdout
    averaged = "--ema_decay" not in flags
    if part == "prior":
        assert_priors_alike(parts[part], two, averaged)
        return
    # the UNet's biases just before a GroupNorm have a zero gradient in exact arithmetic: Adam turns their
    # rounding noise into steps of its learning rate, which differ with the reduction order and change
    # nothing the network computes. So the decoders are compared by what they compute.
    from dalle_dist.checkpoint import load_decoder

    for ema in (False, *([True] if averaged else [])):
        (one, *_), (other, *_) = load_decoder(parts[part], ema=ema), load_decoder(two, ema=ema)
        assert_decoders_compute_alike(one, other)


def assert_priors_alike(one: Path, two: Path, averaged: bool = True) -> None:
    """Two prior runs' final weights (and averages) agree within fp32 rounding."""
    for name in ("model.safetensors", *(["ema.safetensors"] if averaged else [])):
        first, other = (load_file(run / "final" / name) for run in (one, two))
        assert set(first) == set(other), name
        for key in first:
            a, b = first[key], other[key]
            if key.endswith("self_attn.in_proj_bias"):
                # the key projection's bias (the middle third) shifts every logit of a query alike: its
                # gradient is zero in exact arithmetic, and Adam turns the rounding noise into steps of its
                # learning rate that differ with the reduction order (the engines' differ). It changes
                # nothing the network computes: only the query and value thirds are compared.
                third = a.numel() // 3
                a, b = torch.cat([a[:third], a[2 * third :]]), torch.cat([b[:third], b[2 * third :]])
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")


def test_fsdp_resume_continues_the_sharded_average(tmp_path, clip_run, parts):
    """Under FSDP2 each rank averages its shard of the weights; the training state holds the whole average,
    and a resumed run cuts it again: stopped at step 2 and resumed, the prior and its average equal the
    uninterrupted single-process run's."""
    out, fsdp = tmp_path / "split", ENGINES["fsdp"][1]
    train("prior", clip_run, out, "--batch_size", "4", "--max_steps", "2", *fsdp, launcher="torchrun")
    proc = train("prior", clip_run, out, "--batch_size", "4", "--max_steps", "4", "--resume", *fsdp,
                 launcher="torchrun")  # fmt: skip
    assert f"resuming {out} at step 2" in proc.stdout
    assert_priors_alike(parts["prior"], out)


def assert_decoders_compute_alike(one: torch.nn.Module, two: torch.nn.Module) -> None:
    """The two decoders' predictions for the same noised inputs, conditions and steps agree."""
    generator = torch.Generator().manual_seed(0)
    side, channels = one.unet.config.sample_size, one.unet.config.in_channels
    x = torch.randn(3, channels, side, side, generator=generator)
    embed = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=-1)
    text, t, yes = (
        torch.randint(1, 300, (3, 24), generator=generator),
        torch.tensor([5, 50, 95]),
        torch.ones(3, dtype=torch.bool),
    )
    with torch.no_grad():
        out_one, out_two = (m.eval().predict(x, t, embed, text, yes, yes) for m in (one, two))
    torch.testing.assert_close(out_two, out_one, atol=2e-5, rtol=1e-4)


def one_line(proc) -> str:
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in proc.stderr, proc.stderr
    return err


def test_bad_input_is_one_line(tmp_path, clip_run, parts):
    out = tmp_path / "o"
    proc = run_cmd([sys.executable, ROOT / "train_decoder.py", *PART_FLAGS["decoder"], *COMMON,
                    "--output", out], expect=2)  # fmt: skip
    assert "train_decoder.py needs --clip_path" in one_line(proc)
    proc = train("decoder", parts["prior"], out, expect=2)  # a prior run given as the CLIP
    assert "is a prior checkpoint, but --clip_path needs a CLIP one" in one_line(proc)
    proc = train("decoder", clip_run, out, "--decoder_path", parts["prior"], expect=2)
    assert "is a prior checkpoint, but --decoder_path needs a decoder one" in one_line(proc)
    copy = tmp_path / "copy"
    shutil.copytree(parts["decoder"], copy)
    proc = run_cmd([sys.executable, ROOT / "train_decoder.py", "--output", copy, "--resume",
                    "--max_steps", "6", "--dim", "32", "--min_snr_gamma", "0"], expect=2)  # fmt: skip
    assert "--dim 32 (it has 16), --min_snr_gamma 0.0 (it has 5.0); drop them" in one_line(proc)
    proc = train("decoder", clip_run, out, "--min_snr_gamma", "-1", expect=2)
    assert "--min_snr_gamma: must be >= 0, got -1" in one_line(proc)
    assert not (out / "latest").exists()


def test_generate_with_a_prior_and_decoder_writes_the_dalle_layout_and_ranks(tmp_path, clip_run, parts):
    """generate.py --prior_path --decoder_path: DALL-E 1's folders, captions and grids; CLIP ranking alike;
    DALL-E 1's sampling flags refused in one line."""
    import json

    base = [sys.executable, ROOT / "generate.py", "--prior_path", parts["prior"], "--decoder_path",
            parts["decoder"], "--steps", "3", "--prior_steps", "3", "--cf_guidance_scale", "2"]  # fmt: skip
    out = tmp_path / "out"
    proc = run_cmd([*base, "--text", "a red circle|a blue square", "--num_images", "2", "--outputs_dir", out])
    assert "and" in proc.stdout.splitlines()[0] and "(step 4)" in proc.stdout
    for folder in ("a_red_circle", "a_blue_square"):
        names = sorted(p.name for p in (out / folder).iterdir())
        assert names == ["0.png", "1.png", "caption.txt", "grid.png"], names
    ranked = tmp_path / "ranked"
    run_cmd([*base, "--text", "a red circle", "--num_candidates", "4", "--keep", "2", "--clip_path", clip_run,
             "--outputs_dir", ranked])  # fmt: skip
    scores = json.loads((ranked / "a_red_circle" / "scores.json").read_text())
    assert scores["candidates"] == 4 and len(scores["images"]) == 2
    assert scores["images"][0]["clip_score"] >= scores["images"][1]["clip_score"]
    # the prior's own guidance: equal to the shared scale it defaults to, another scale another picture
    seeded = [*base, "--text", "a red circle", "--num_images", "1", "--seed", "3"]
    for name, extra in (
        ("same", []),
        ("explicit", ["--prior_cond_scale", "2"]),
        ("one", ["--prior_cond_scale", "1"]),
        ("bf16", ["--bf16"]),
    ):
        run_cmd([*seeded, *extra, "--outputs_dir", tmp_path / name])
    pixels = {
        name: np.asarray(Image.open(tmp_path / name / "a_red_circle" / "0.png")).astype(np.int16)
        for name in ("same", "explicit", "one", "bf16")
    }
    assert np.array_equal(pixels["same"], pixels["explicit"])
    assert not np.array_equal(pixels["same"], pixels["one"])
    # --bf16: the same picture but for bf16 rounding (prior and decoder under bf16 autocast)
    bf16_error = np.abs(pixels["bf16"] - pixels["same"]).mean()
    print("bf16 mean abs pixel difference", bf16_error)
    assert not np.array_equal(pixels["bf16"], pixels["same"]) and bf16_error < 8
    for extra, words in (
        (["--top_k", "0.5"], "--top_k: DALL-E 1 sampling flags"),
        (["--dalle_path", parts["prior"]], "keep one"),
    ):
        proc = run_cmd([*base, "--text", "a red circle", *extra, "--outputs_dir", tmp_path / "bad"], expect=2)
        assert words in one_line(proc)
    proc = run_cmd([sys.executable, ROOT / "generate.py", "--dalle_path", parts["decoder"], "--text", "a",
                    "--prior_cond_scale", "2", "--steps", "3", "--outputs_dir", tmp_path / "bad"],
                   expect=2)  # fmt: skip
    assert "--steps, --prior_cond_scale: DALL-E 2 sampling flags" in one_line(proc)
    proc = run_cmd([sys.executable, ROOT / "generate.py", "--prior_path", parts["prior"], "--text", "a",
                    "--outputs_dir", tmp_path / "bad"], expect=2)  # fmt: skip
    assert "needs both --prior_path and --decoder_path" in one_line(proc)
    assert not (tmp_path / "bad").exists()
