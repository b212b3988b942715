"""train_autoencoder.py and the latent decoder (train_decoder.py --autoencoder_path) end to end at tiny sizes
(issue [3/6]): real processes, the latent normalisation fitted at every checkpoint, an exact resume,
2 ranks under each launcher equal to one process, the autoencoder carried frozen inside the decoder and
sampled from by generate.py, and bad input as one line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, launch_2_ranks, noise_folder, run_cmd
from PIL import Image
from safetensors.torch import load_file
from test_dalle2_training import CLIP_FLAGS, COMMON, PART_FLAGS, assert_decoders_compute_alike, one_line

pytest.importorskip("diffusers", reason="diffusers is a dependency of dalle_dist: pip install -e .")

AE = "--image_size 16 --widths 8,16 --latent_channels 4 --norm_groups 4 --dataset_size 64 --stats_images 48 "
AE += "--log_every 1 --sample_every 100 --save_every_n_steps 2"
AE_FLAGS = AE.split()


def train_ae(out: Path, *extra, expect: int = 0, launcher: str | None = None):
    args = [*AE_FLAGS, "--output", out, *extra]
    if launcher is None:
        return run_cmd([sys.executable, ROOT / "train_autoencoder.py", *args], expect=expect)
    return run_cmd(launch_2_ranks(launcher, "train_autoencoder.py", *args), expect=expect)


def train_latent_decoder(
    clip: Path, ae: Path, out: Path, *extra, expect: int = 0, launcher: str | None = None
):
    args = ["--clip_path", clip, "--autoencoder_path", ae, *PART_FLAGS["decoder"], *COMMON, "--output", out]
    args += [*extra]
    if launcher is None:
        return run_cmd([sys.executable, ROOT / "train_decoder.py", *args], expect=expect)
    return run_cmd(launch_2_ranks(launcher, "train_decoder.py", *args), expect=expect)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("latent")
    run_cmd([sys.executable, ROOT / "train_clip.py", *CLIP_FLAGS, "--output", base / "clip"])
    proc = train_ae(base / "ae", "--batch_size", "8", "--max_steps", "4")
    assert "autoencoder trained:" in proc.stdout
    proc = train_latent_decoder(
        base / "clip", base / "ae", base / "decoder", "--batch_size", "8", "--max_steps", "4"
    )
    assert "decoder trained:" in proc.stdout
    return {"clip": base / "clip", "ae": base / "ae", "decoder": base / "decoder"}


def the_runs_stats_pictures() -> torch.Tensor:
    """The pictures the tiny run's normalisation is measured on: the first 48 of its data, centre-cropped."""
    from dalle_dist.distributed import BackendConfig, backend_from_config
    from dalle_dist.training.autoencoder_job import build_parser, stats_pictures
    from dalle_dist.training.flags import data_config
    from dalle_dist.training.job import load_data

    args = build_parser().parse(AE_FLAGS)
    backend = backend_from_config(BackendConfig(name="single"))
    return stats_pictures(load_data(data_config(args, None), backend), 48)


def test_the_autoencoder_logs_psnr_and_saves_latents_of_unit_scale(runs):
    from dalle_dist.checkpoint import load_autoencoder

    log = (runs["ae"] / "metrics.jsonl").read_text()
    assert '"psnr"' in log and '"kl"' in log
    assert (runs["ae"] / "samples" / "autoencoder-step-00000004.png").is_file()
    ae, ckpt = load_autoencoder(runs["ae"])
    assert ckpt.meta["model"]["latent_channels"] == 4 and ae.latent_size == 8
    pictures = the_runs_stats_pictures()
    assert pictures.shape == (48, 3, 16, 16)
    with torch.no_grad():
        z = ae.eval().encode(pictures)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)
    # every checkpoint measures its own encoder: the step-2 one differs
    step2 = load_file(runs["ae"] / "checkpoints" / "step-00000002" / "model.safetensors")
    assert not torch.equal(step2["latent_std"], ae.latent_std)


def test_the_autoencoder_trains_on_shards_and_measures_their_first_pictures(tmp_path):
    """--wds reads the shards train_dalle.py reads (--wds_val validates on others); the latent
    normalisation is measured on the first pictures of the first shards, centre-cropped."""
    from dalle_dist.checkpoint import load_autoencoder
    from dalle_dist.data.make_shards import make_shards
    from dalle_dist.data.shards import Keys, ShardDataset
    from dalle_dist.training.autoencoder_job import stats_pictures

    make_shards(noise_folder(tmp_path / "folder", 12, side=20), tmp_path / "shards", maxcount=5)
    shutil.copytree(tmp_path / "shards", tmp_path / "val")
    out = tmp_path / "ae"
    flags = ["--wds", "png,txt", "--image_folder", tmp_path / "shards", "--wds_val", tmp_path / "val"]
    train_ae(out, *flags, "--batch_size", "4", "--max_steps", "2", "--stats_images", "7", "--eval_every", "2")
    ae, ckpt = load_autoencoder(out)
    assert ckpt.meta["data"]["kind"] == "shards" and ckpt.meta["data"]["count"] == 12
    assert any("val_loss" in line for line in (out / "metrics.jsonl").read_text().splitlines())
    shards = ShardDataset(tmp_path / "shards", Keys.parse("png,txt"), 16, resize_ratio=1.0)
    first = stats_pictures(shards, 7)
    assert first.shape == (7, 3, 16, 16)
    with torch.no_grad():
        z = ae.eval().encode(first)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)


def test_autoencoder_resume_is_exact(tmp_path, runs):
    out = tmp_path / "split"
    train_ae(out, "--batch_size", "8", "--max_steps", "2")
    assert "resuming" in train_ae(out, "--batch_size", "8", "--max_steps", "4", "--resume").stdout
    straight, resumed = (load_file(r / "final" / "model.safetensors") for r in (runs["ae"], out))
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


ENGINES = {  # name -> (launcher, flags)
    "torchrun": ("torchrun", []),
    # the normalisation is measured outside the forward: on ZeRO-3's partitions, on FSDP2's shards
    "deepspeed-zero3": ("deepspeed", ["--deepspeed", "--zero_stage", "3"]),
    "fsdp": ("torchrun", ["--distributed_backend", "fsdp"]),
    "horovodrun": ("horovodrun", []),
}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_autoencoder_two_ranks_equal_one_process(tmp_path, runs, engine):
    """2 ranks x 4 pictures read the same global batches as 1 x 8 and draw each picture's posterior sample
    from its own seed: the same autoencoder, normalisation included (measured alike on every rank)."""
    from dalle_dist.checkpoint import load_autoencoder

    launcher, flags = ENGINES[engine]
    if launcher == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
    if launcher == "horovodrun":
        pytest.importorskip("horovod.torch", reason="Horovod is not installed (make install-dev builds it)")
    two = tmp_path / "two"
    proc = train_ae(two, "--batch_size", "4", "--max_steps", "4", *flags, launcher=launcher)
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    # biases just before a GroupNorm have no gradient in exact arithmetic (Adam turns their rounding noise
    # into steps that differ with the reduction order): the autoencoders are compared by what they compute
    (one, _), (other, _) = load_autoencoder(runs["ae"]), load_autoencoder(two)
    torch.testing.assert_close(other.latent_mean, one.latent_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(other.latent_std, one.latent_std, atol=1e-4, rtol=1e-4)
    pictures = the_runs_stats_pictures()[:8]
    with torch.no_grad():
        z_one, z_two = one.eval().encode(pictures), other.eval().encode(pictures)
        torch.testing.assert_close(z_two, z_one, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(other.decode(z_one), one.decode(z_one), atol=1e-4, rtol=1e-4)


def test_the_latent_decoder_carries_its_frozen_autoencoder_and_generates(tmp_path, runs):
    import json

    from dalle_dist.checkpoint import load_decoder

    meta = json.loads((runs["decoder"] / "final" / "meta.json").read_text())
    assert meta["autoencoder"]["latent_channels"] == 4
    assert Path(meta["autoencoder_source"]).resolve() == (runs["ae"] / "final").resolve()
    ae_weights = load_file(runs["ae"] / "final" / "model.safetensors")
    decoder_weights = load_file(runs["decoder"] / "final" / "model.safetensors")
    for key, value in ae_weights.items():  # frozen: as the autoencoder run left them
        assert torch.equal(decoder_weights[f"autoencoder.{key}"], value), key
    decoder, _, _ = load_decoder(runs["decoder"])
    assert decoder.unet.config.in_channels == 4 and decoder.unet.config.sample_size == 8
    # a prior from the same CLIP, then generate.py as for a pixel decoder
    prior = tmp_path / "prior"
    run_cmd([sys.executable, ROOT / "train_prior.py", "--clip_path", runs["clip"], *PART_FLAGS["prior"],
             *COMMON, "--batch_size", "8", "--max_steps", "2", "--output", prior])  # fmt: skip
    out = tmp_path / "out"
    run_cmd([sys.executable, ROOT / "generate.py", "--prior_path", prior, "--decoder_path", runs["decoder"],
             "--steps", "3", "--prior_steps", "3", "--text", "a red circle", "--num_images", "2",
             "--outputs_dir", out])  # fmt: skip
    assert Image.open(out / "a_red_circle" / "0.png").size == (16, 16)


def test_latent_decoder_resume_is_exact_and_two_ranks_equal_one(tmp_path, runs):
    from dalle_dist.checkpoint import load_decoder

    out = tmp_path / "split"
    train_latent_decoder(runs["clip"], runs["ae"], out, "--batch_size", "8", "--max_steps", "2")
    proc = run_cmd(
        [sys.executable, ROOT / "train_decoder.py", "--output", out, "--resume", "--max_steps", "4"]
    )
    assert "resuming" in proc.stdout
    for name in ("model.safetensors", "ema.safetensors"):
        straight, resumed = (load_file(r / "final" / name) for r in (runs["decoder"], out))
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), (name, key)
    two = tmp_path / "two"
    proc = train_latent_decoder(
        runs["clip"], runs["ae"], two, "--batch_size", "4", "--max_steps", "4", launcher="torchrun"
    )
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    (one, *_), (other, *_) = load_decoder(runs["decoder"], ema=False), load_decoder(two, ema=False)
    assert_decoders_compute_alike(one, other)  # the UNet's pre-GroupNorm biases: see the pixel decoder's


def test_bad_input_is_one_line(tmp_path, runs):
    out = tmp_path / "o"
    proc = train_latent_decoder(runs["clip"], runs["clip"], out, expect=2)
    assert "is a CLIP checkpoint, but --autoencoder_path needs an autoencoder one" in one_line(proc)
    proc = train_latent_decoder(runs["clip"], runs["ae"], out, "--image_size", "32", expect=2)
    assert "--image_size 32 does not match the autoencoder's 16: drop it" in one_line(proc)
    # a resume keeps the autoencoder it was trained on; a pixel decoder cannot gain one by fine-tuning
    other_ae = tmp_path / "other_ae"
    shutil.copytree(runs["ae"], other_ae)
    copy = tmp_path / "copy"
    shutil.copytree(runs["decoder"], copy)
    proc = run_cmd([sys.executable, ROOT / "train_decoder.py", "--output", copy, "--resume", "--max_steps",
                    "6", "--autoencoder_path", other_ae], expect=2)  # fmt: skip
    assert "the decoder carries the autoencoder it was trained on" in one_line(proc)
    pixel = tmp_path / "pixel"
    run_cmd([sys.executable, ROOT / "train_decoder.py", "--clip_path", runs["clip"], *PART_FLAGS["decoder"],
             *COMMON, "--batch_size", "8", "--max_steps", "1", "--output", pixel])  # fmt: skip
    proc = run_cmd([sys.executable, ROOT / "train_decoder.py", "--decoder_path", pixel, "--autoencoder_path",
                    runs["ae"], *COMMON, "--output", out], expect=2)  # fmt: skip
    assert "the decoder was built without an autoencoder (it diffuses pixels)" in one_line(proc)
    proc = train_ae(out, "--widths", "8,10", expect=2)
    assert "model flags: norm_groups 4 must divide every width 8, 10" in one_line(proc)
    proc = train_ae(out, "--wds", "png,txt", "--image_folder", tmp_path / "no_shards", expect=2)
    assert f"{tmp_path / 'no_shards'} does not exist: give a .tar file, a folder of shards" in one_line(proc)
    copy_ae = tmp_path / "copy_ae"
    shutil.copytree(runs["ae"], copy_ae)
    proc = run_cmd([sys.executable, ROOT / "train_autoencoder.py", "--output", copy_ae, "--resume",
                    "--latent_channels", "8"], expect=2)  # fmt: skip
    assert "--latent_channels 8 (it has 4)" in one_line(proc)
    assert not (out / "latest").exists()
