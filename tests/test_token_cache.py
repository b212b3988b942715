"""Frozen-VAE image tokens: encode_tokens writes what the VAE computes on the training preprocessing, a
DALL-E run on the cached tokens ends with the same weights as the run that encodes pixels every step, and
bad token files fail in one line (exit 2) without ever being unpickled."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DALLE, small_vae
from PIL import Image
from safetensors.torch import load_file

from dalle_dist import DiscreteVAE
from dalle_dist.checkpoint import describe_vae, save_checkpoint
from dalle_dist.data import load_image
from dalle_dist.data.make_shards import main as make_shards_main
from dalle_dist.data.token_cache import TokenCache, default_file_name, vae_hash
from dalle_dist.encode_tokens import main as encode_main
from dalle_dist.training import dalle_job

N = 10
DALLE = [*TINY_DALLE.split(), "--batch_size", "4", "--max_steps", "3", "--log_every", "1"]
DALLE += ["--sample_every", "1000", "--save_every_n_steps", "1000", "--random_resize_crop_lower_ratio", "1"]


def vae_run(root: Path, image_size: int = 16, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A VAE checkpoint as train_vae.py writes it (untrained weights: any frozen VAE will do)."""
    vae = small_vae(image_size=image_size)
    if seed:
        torch.manual_seed(seed)
        vae.codebook.weight.data.normal_()
        vae.encoder[0].weight.data.normal_()
    save_checkpoint(root / "final", kind="vae", meta={"vae": describe_vae(vae)}, module=vae)
    return root, vae


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tokens")
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N):
        name = folder / ("sub" if i % 3 == 0 else "") / f"img{i:02d}"
        # square, so a crop of the whole area is the centre square; two captions: the choice is random
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(name.with_suffix(".png"))
        name.with_suffix(".txt").write_text(f"picture {i}\nanother caption {i}\n")
    shards = root / "shards"
    assert make_shards_main([str(folder), str(shards), "--maxcount", "4"]) == 0
    vae_dir, vae = vae_run(root / "vae")
    return {"root": root, "folder": folder, "shards": shards, "vae_dir": vae_dir, "vae": vae}


def encode(*args) -> int:
    return encode_main([str(a) for a in args])


def train(*args) -> int:
    return dalle_job.main([*map(str, args), *DALLE])


def folder_tokens(setup: dict) -> Path:
    path = setup["folder"] / default_file_name(
        vae_hash(describe_vae(setup["vae"]), setup["vae"].state_dict())
    )
    if not path.exists():
        assert encode("--vae_path", setup["vae_dir"], "--image_text_folder", setup["folder"]) == 0
    return path


def test_folder_tokens_are_the_vaes_codes(setup):
    path = folder_tokens(setup)  # default: inside the folder, named by the VAE's hash
    with np.load(path, allow_pickle=False) as npz:
        keys, tokens, meta = npz["keys"], npz["tokens"], json.loads(str(npz["meta"]))
    assert keys.dtype.kind == "U" and tokens.dtype == np.int16 and tokens.shape == (N, 16)
    assert "sub/img00.png" in keys.tolist() and meta["image_size"] == 16 and meta["num_tokens"] == 32
    images = torch.stack([load_image(setup["folder"] / k, 16) for k in keys])
    expected = setup["vae"].eval().get_codebook_indices(images)
    assert torch.equal(torch.from_numpy(tokens).long(), expected)


def test_shard_tokens_match_the_folders_and_record_broken_images(setup, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(setup["shards"], shards)
    with tarfile.open(shards / "extra.tar", "w") as tar:
        for name, data in (("bad.png", b"not a png"), ("bad.txt", b"a caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "t.npz"
    assert encode("--vae_path", setup["vae_dir"], "--wds", "png,txt", "--image_text_folder", shards,
                  "--output", out, "--batch_size", "3") == 0  # fmt: skip
    shard_cache, folder_cache = TokenCache.load(out), TokenCache.load(folder_tokens(setup))
    assert len(shard_cache) == N and shard_cache.skipped["extra.tar/bad"][0] == "broken image"
    # "shard-000001.tar/sub/img00": the shard's name, then make_shards' key (the image path sans suffix)
    for key in shard_cache.keys.tolist():
        assert torch.equal(shard_cache.get(key), folder_cache.get(key.split("/", 1)[1] + ".png")), key
    assert shard_cache.meta["data"]["shard_counts"]["extra.tar"] == 1


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


@pytest.mark.parametrize("source", ["folder", "shards"])
def test_cached_tokens_train_exactly_like_pixels(setup, tmp_path, capsys, monkeypatch, source):
    data = ["--image_text_folder", setup["folder"]]
    tokens = folder_tokens(setup)
    if source == "shards":
        tokens = tmp_path / "shards.npz"
        data = ["--wds", "png,txt", "--image_text_folder", setup["shards"], "--shuffle_buffer", "3"]
        assert encode("--vae_path", setup["vae_dir"], *data[:4], "--output", tokens) == 0
    assert train("--vae_path", setup["vae_dir"], *data, "--output", tmp_path / "pixels") == 0

    def no_encoding(*_):
        raise AssertionError("the VAE encoded images in a run on cached tokens")

    monkeypatch.setattr(DiscreteVAE, "get_codebook_indices", no_encoding)
    assert (
        train(
            "--vae_path", setup["vae_dir"], *data, "--output", tmp_path / "cached", "--image_tokens", tokens
        )
        == 0
    )
    assert "random crop positions (non-square images) do not apply" in capsys.readouterr().out
    pixels, cached = weights(tmp_path / "pixels"), weights(tmp_path / "cached")
    for key in pixels:
        torch.testing.assert_close(cached[key], pixels[key], atol=0, rtol=0, msg=key)
    meta = json.loads((tmp_path / "cached" / "final" / "meta.json").read_text())
    assert meta["image_tokens"] == {"file": str(tokens), "vae_hash": TokenCache.load(tokens).vae_hash}


def test_bad_token_files_fail_in_one_line(setup, tmp_path, capsys):
    good = folder_tokens(setup)
    base = ["--vae_path", setup["vae_dir"], "--image_text_folder", setup["folder"]]

    def fails(*args, vae=None) -> str:
        argv = ["--vae_path", vae, *base[2:]] if vae else base
        assert train(*argv, "--output", tmp_path / "run", *args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    assert "does not exist" in fails("--image_tokens", tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    assert "not a readable token file" in fails("--image_tokens", tmp_path / "junk.npz")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-100])  # a copy that broke off
    assert "not a readable token file" in fails("--image_tokens", tmp_path / "cut.npz")
    other_vae, _ = vae_run(tmp_path / "other", seed=1)
    assert "written with another VAE" in fails("--image_tokens", good, vae=other_vae)
    big_vae, _ = vae_run(tmp_path / "big", image_size=32)
    assert "holds tokens of 16 px images, this run trains on 32 px" in fails(
        "--image_tokens", good, vae=big_vae
    )
    # one more image than when the tokens were written
    folder = tmp_path / "grown"
    shutil.copytree(setup["folder"], folder, ignore=shutil.ignore_patterns("*.npz"))
    shutil.copy(setup["folder"] / "img01.png", folder / "new.png")
    (folder / "new.txt").write_text("a new picture\n")
    err = fails("--image_tokens", good, "--image_text_folder", folder)
    assert f"1 of {N + 1} samples" in err and "new.png" in err and "rerun" in err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


class _Trap:
    """Unpickling this writes a file: proof that loading ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_loading_never_unpickles(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.npz"
    keys = np.array([_Trap(marker)], dtype=object)
    meta = json.dumps({"format": "dalle_dist.image_tokens", "format_version": 1, "image_seq_len": 1})
    np.savez(path, keys=keys, tokens=np.zeros((1, 1), np.int16), meta=np.array(meta))
    with pytest.raises(ValueError, match=r"not a readable token file.*allow_pickle"):
        TokenCache.load(path)
    assert not marker.exists()


def test_encode_bad_input_exits_2(setup, tmp_path, capsys):
    assert encode("--vae_path", tmp_path / "nope") == 2
    assert "does not exist" in capsys.readouterr().err
    assert encode("--vae_path", setup["vae_dir"]) == 2  # the built-in dataset has no folder to write into
    assert "give --output" in capsys.readouterr().err
    assert encode("--vae_path", setup["vae_dir"], "--wds", "png,txt") == 2
    assert "--wds needs --image_text_folder" in capsys.readouterr().err
