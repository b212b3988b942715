"""Pretrained VAE adapters: small VQGAN (plain, Gumbel) and OpenAI dVAE weights written in the original files'
layout and formats load exactly; DALLE trains and samples on them; bad files are refused in words, and a
crafted pickle is never run."""

import contextlib
import hashlib
import json
import pickle
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT, TINY_DALLE, free_port, run_cmd, small_dalle
from safetensors.torch import save_file

from dalle_dist.errors import UserError
from dalle_dist.models import DALLE
from dalle_dist.models.openai_dvae import Decoder, Encoder, map_pixels, unmap_pixels
from dalle_dist.models.pretrained import OpenAIDiscreteVAE, VQGanVAE, pretrained_vae_from_config
from dalle_dist.models.vqgan import GumbelVQ, VQModel

# 32 px, two 2x downsamplings (an 8 x 8 token grid), attention at 16 px, 64 codes
DDCONFIG = dict(
    double_z=False,
    z_channels=32,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_resolutions=[16],
    dropout=0.0,
)
N_EMBED = 64
# taming's parameter names, a few from every kind of layer of this configuration
TAMING_NAMES = (
    "encoder.conv_in.weight",
    "encoder.down.0.block.0.norm1.weight",
    "encoder.down.0.downsample.conv.weight",
    "encoder.down.1.block.0.nin_shortcut.weight",
    "encoder.down.1.attn.0.q.weight",
    "encoder.mid.attn_1.proj_out.bias",
    "encoder.mid.block_2.conv2.weight",
    "encoder.norm_out.weight",
    "encoder.conv_out.weight",
    "quant_conv.weight",
    "post_quant_conv.weight",
    "decoder.conv_in.weight",
    "decoder.mid.block_1.norm2.bias",
    "decoder.up.2.upsample.conv.weight",
    "decoder.up.1.attn.1.v.weight",
    "decoder.up.0.block.0.nin_shortcut.weight",
    "decoder.up.0.block.1.conv1.weight",
    "decoder.conv_out.weight",
)


def _perturb(module: torch.nn.Module) -> None:
    """Noise on every parameter: unit norms and zero biases would hide a tensor loaded in the wrong place."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


@contextlib.contextmanager
def _lightning_module():
    """Lightning's ``ModelCheckpoint`` class importable under its name while a checkpoint is pickled (old
    Lightning keys its callback states by the class), gone again when it is read."""
    name = "pytorch_lightning.callbacks.model_checkpoint"
    cls = type("ModelCheckpoint", (), {"__module__": name})
    modules = {n: types.ModuleType(n) for n in ("pytorch_lightning", "pytorch_lightning.callbacks", name)}
    modules[name].ModelCheckpoint = cls
    saved = {n: sys.modules.get(n) for n in modules}
    sys.modules.update(modules)
    try:
        yield cls
    finally:
        for n, module in saved.items():
            if module is None:
                del sys.modules[n]
            else:
                sys.modules[n] = module


def _taming_files(
    folder: Path, gumbel: bool = False, extra: dict | None = None
) -> tuple[VQModel, Path, Path]:
    """A small VQGAN saved as taming-transformers does: a Lightning ``.ckpt`` and a project ``.yaml``."""
    torch.manual_seed(1 if gumbel else 0)
    embed_dim = 32 if gumbel else 16  # GumbelVQ's proj takes z_channels-wide input: embed_dim == z_channels
    net = (GumbelVQ if gumbel else VQModel)(DDCONFIG, N_EMBED, embed_dim)
    _perturb(net)
    state = net.state_dict()
    # what else a taming checkpoint's state dict holds: the perceptual loss and discriminator
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    with _lightning_module() as model_checkpoint:
        ckpt = {
            "epoch": 3,
            "global_step": 1200,
            "pytorch-lightning_version": "1.0.8",
            "state_dict": state,
            "callbacks": {
                model_checkpoint: {"best_model_score": torch.tensor(0.25), "best_model_path": "x.ckpt"}
            },
            "optimizer_states": [
                {"state": {}, "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}
            ],
            "lr_schedulers": [],
            **(extra or {}),
        }
        torch.save(ckpt, folder / "last.ckpt")
    params = {
        "embed_dim": embed_dim,
        "n_embed": N_EMBED,
        "ddconfig": DDCONFIG,
        "lossconfig": {
            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {
                "disc_conditional": False,
                "disc_in_channels": 3,
                "disc_start": 250001,
                "disc_weight": 0.8,
            },
        },
    }
    if gumbel:
        params["kl_weight"] = 1e-8
        params["temperature_scheduler_config"] = {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9, "lr_max": 0.9},
        }
    target = "taming.models.vqgan." + ("GumbelVQ" if gumbel else "VQModel")
    config = {
        "model": {"base_learning_rate": 4.5e-6, "target": target, "params": params},
        "data": {"params": {}},
    }
    (folder / "project.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return net.eval(), folder / "last.ckpt", folder / "project.yaml"


def _openai_expected_names(n_blk: int, widths: tuple[int, ...], first: int) -> set[str]:
    """OpenAI's parameter names: ``id_path`` only where a block changes width."""
    names = {"blocks.input.w", "blocks.input.b", "blocks.output.conv.w", "blocks.output.conv.b"}
    width = first
    for g, out in enumerate(widths, start=1):
        for k in range(1, n_blk + 1):
            prefix = f"blocks.group_{g}.block_{k}"
            names |= {f"{prefix}.res_path.conv_{i}.{p}" for i in range(1, 5) for p in "wb"}
            if width != out:
                names |= {f"{prefix}.id_path.w", f"{prefix}.id_path.b"}
            width = out
    return names


def _openai_files(folder: Path) -> tuple[Encoder, Decoder, Path, Path]:
    """A small OpenAI dVAE: the encoder as a torch.save'd state dict, the decoder as safetensors."""
    torch.manual_seed(0)
    enc = Encoder(n_hid=8, n_blk_per_group=1, vocab_size=N_EMBED)
    dec = Decoder(n_init=16, n_hid=8, n_blk_per_group=1, vocab_size=N_EMBED)
    _perturb(enc)
    _perturb(dec)
    assert set(enc.state_dict()) == _openai_expected_names(1, (8, 16, 32, 64), 8)
    assert set(dec.state_dict()) == _openai_expected_names(1, (64, 32, 16, 8), 16)
    torch.save(enc.state_dict(), folder / "encoder.pt")
    save_file(dec.state_dict(), folder / "decoder.safetensors")
    return enc.eval(), dec.eval(), folder / "encoder.pt", folder / "decoder.safetensors"


class Payload:
    """Unpickling this creates ``marker`` (by calling open): what a crafted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _images(batch: int, cells: int) -> torch.Tensor:
    """32 px images of ``cells`` x ``cells`` random colour patches: untrained networks average away pixel
    noise, and a patch per token gives their codes something to tell apart."""
    return F.interpolate(torch.rand(batch, 3, cells, cells), size=(32, 32), mode="nearest")


def _frozen(vae: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in vae.parameters()) and not any(m.training for m in vae.modules())


# ------------------------------------------------------------------------------------------ VQGAN
@pytest.mark.parametrize("gumbel", [False, True], ids=["VQModel", "GumbelVQ"])
def test_vqgan_checkpoint_loads_exactly(tmp_path, gumbel):
    net, ckpt, config = _taming_files(tmp_path, gumbel)
    state = net.state_dict()  # what the checkpoint holds, besides loss.*
    assert set(TAMING_NAMES) <= set(state)
    assert ("quantize.embed.weight" if gumbel else "quantize.embedding.weight") in state

    # like taming's own checkpoints, the file names Lightning's ModelCheckpoint class: plain weights-only
    # loading refuses it, the reader lets that one name through (as an inert stand-in) and nothing else
    with pytest.raises(
        pickle.UnpicklingError,
        match=r"GLOBAL pytorch_lightning\.callbacks\.model_checkpoint\.ModelCheckpoint",
    ):
        torch.load(ckpt, weights_only=True)
    allowed = set(torch.serialization.get_safe_globals())
    vae = VQGanVAE(ckpt, config)
    assert set(torch.serialization.get_safe_globals()) == allowed  # allowed for that read only
    assert (vae.image_size, vae.num_tokens, vae.num_layers, vae.fmap_size) == (32, N_EMBED, 2, 8)
    assert vae.is_gumbel == gumbel and isinstance(vae.model, GumbelVQ) == gumbel
    assert all(torch.equal(v, state[k]) for k, v in vae.model.state_dict().items())
    vae.train()  # what DALLE.train() does to its VAE: the frozen network stays in eval mode
    assert _frozen(vae)

    images = _images(3, 8)
    ids = vae.get_codebook_indices(images)
    assert ids.shape == (3, 64) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < N_EMBED and ids.unique().numel() > 1
    with torch.no_grad():
        assert torch.equal(ids, net.encode_indices(images * 2 - 1).flatten(1))
        out = vae.decode(ids)
        assert torch.equal(out, (net.decode_indices(ids.view(3, 8, 8)).clamp(-1, 1) + 1) / 2)
    assert out.shape == (3, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(vae.denormalize(out), out)


def test_vqgan_config_errors_are_in_words(tmp_path):
    _, ckpt, config = _taming_files(tmp_path)
    data = yaml.safe_load(config.read_text())

    def write(change) -> Path:
        bad = json.loads(json.dumps(data))
        change(bad["model"])
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        return path

    cases = [
        (lambda m: m.update(target="taming.models.vqgan.EMAVQ"), "EMAVQ is not supported"),
        (
            lambda m: m["params"].update(n_embed=32),
            "quantize.embedding.weight (64, 16) (the model's (32, 16))",
        ),
        (lambda m: m.update(target="taming.models.vqgan.GumbelVQ"), "GumbelVQ needs embed_dim == z_channels"),
        (
            lambda m: m.update(
                target="taming.models.vqgan.GumbelVQ", params={**m["params"], "embed_dim": 32}
            ),
            "missing 3: quantize.proj.weight",
        ),
        (lambda m: m["params"]["ddconfig"].pop("ch"), "lacks ['ch']"),
        (lambda m: m["params"].pop("ddconfig"), "lacks 'ddconfig'"),
    ]
    for change, message in cases:
        with pytest.raises(UserError, match=r"bad\.yaml|last\.ckpt") as e:
            VQGanVAE(ckpt, write(change))
        assert message in str(e.value)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(UserError, match="no model\\.target and model\\.params"):
        VQGanVAE(ckpt, tmp_path / "list.yaml")
    with pytest.raises(UserError, match="not a PyTorch file"):
        VQGanVAE(config, config)  # the yaml passed as the checkpoint
    torch.save({"epoch": 1}, tmp_path / "no_state.ckpt")
    with pytest.raises(UserError, match=r"has no 'state_dict' \(found \['epoch'\]\)"):
        VQGanVAE(tmp_path / "no_state.ckpt", config)


# ------------------------------------------------------------------------------------------ OpenAI
def test_openai_dvae_state_dicts_load_exactly(tmp_path):
    enc, dec, enc_path, dec_path = _openai_files(tmp_path)
    vae = OpenAIDiscreteVAE(enc_path, dec_path, image_size=32)
    assert (vae.image_size, vae.num_tokens, vae.num_layers, vae.fmap_size) == (32, N_EMBED, 3, 4)
    assert vae.enc.config() == enc.config() and vae.dec.config() == dec.config()  # read from the shapes
    vae.train()
    assert _frozen(vae)

    images = _images(3, 4)
    ids = vae.get_codebook_indices(images)
    assert ids.shape == (3, 16) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < N_EMBED and ids.unique().numel() > 1
    with torch.no_grad():
        assert torch.equal(ids, enc(map_pixels(images)).argmax(1).flatten(1))
        out = vae.decode(ids)
        # DALLE-pytorch's decode: the decoder on one-hot codes, sigmoid of the first 3 channels, unmapped
        one_hot = F.one_hot(ids.view(3, 4, 4), N_EMBED).permute(0, 3, 1, 2).float()
        assert torch.equal(out, unmap_pixels(torch.sigmoid(dec(one_hot)[:, :3])))
    assert out.shape == (3, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    # the encoder and decoder files swapped: told, not a shape error
    with pytest.raises(UserError, match="is this the decoder"):
        OpenAIDiscreteVAE(dec_path, enc_path, image_size=32)


def test_a_pickled_module_of_another_package_is_refused(tmp_path):
    """Only OpenAI's class names resolve (tests/test_openai_pickles.py reads its published files): a whole
    module pickled from any other package is refused, as .pkl and as .pt."""
    dec_path = _openai_files(tmp_path)[3]
    module = Encoder(n_hid=8, n_blk_per_group=1, vocab_size=N_EMBED)
    torch.save(module, tmp_path / "encoder.pkl")
    for name in ("encoder.pkl", "module.pt"):
        if name == "module.pt":
            (tmp_path / "encoder.pkl").rename(tmp_path / "module.pt")
        with pytest.raises(
            UserError, match=r"refused.*GLOBAL dalle_dist.models.openai_dvae.Encoder.*nothing in it"
        ):
            OpenAIDiscreteVAE(tmp_path / name, dec_path)


# ------------------------------------------------------------------------------------------ both
def test_missing_files_say_which_and_where_to_get_them(tmp_path):
    _, ckpt, config = _taming_files(tmp_path)
    with pytest.raises(UserError, match=r"vqgan_model_path .*nope.ckpt does not exist.*heibox"):
        VQGanVAE(tmp_path / "nope.ckpt", config)
    with pytest.raises(UserError, match=r"vqgan_config_path .*nope.yaml does not exist.*taming"):
        VQGanVAE(ckpt, tmp_path / "nope.yaml")
    with pytest.raises(UserError, match=r"no vqgan_model_path .* given: dalle_dist downloads nothing"):
        VQGanVAE()
    _, _, enc_path, _ = _openai_files(tmp_path)
    with pytest.raises(
        UserError, match=r"dec_path .*decoder.pt does not exist.*cdn.openai.com/dall-e/decoder.pkl"
    ):
        OpenAIDiscreteVAE(enc_path, tmp_path / "decoder.pt")
    with pytest.raises(UserError, match="no enc_path"):
        OpenAIDiscreteVAE()


def test_crafted_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _, _, config = _taming_files(tmp_path, extra={"hparams": Payload(marker)})
    with pytest.raises(
        UserError, match=r"refused to load VQGAN checkpoint .*GLOBAL (io\.)?open.*nothing in it was run"
    ):
        VQGanVAE(tmp_path / "last.ckpt", config)
    _, _, _, dec_path = _openai_files(tmp_path)
    torch.save({"blocks.input.w": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load OpenAI dVAE encoder"):
        OpenAIDiscreteVAE(tmp_path / "evil.pt", dec_path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload is live: plain unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize("kind", ["vqgan", "openai"])
def test_config_records_the_files_and_rebuilds(tmp_path, kind):
    if kind == "vqgan":
        _, *files = _taming_files(tmp_path, gumbel=True)
        vae = VQGanVAE(*files)
        keys = ("vqgan_model_path", "vqgan_config_path")
    else:
        *_, enc_path, dec_path = _openai_files(tmp_path)
        files = [enc_path, dec_path]
        vae = OpenAIDiscreteVAE(*files, image_size=32)
        keys = ("enc_path", "dec_path")
    config = vae.config()
    assert json.loads(json.dumps(config)) == config
    for key, path in zip(keys, files, strict=True):
        assert config[key] == str(path.resolve())
        assert config["sha256"][key] == hashlib.sha256(path.read_bytes()).hexdigest()

    ids = torch.randint(0, N_EMBED, (2, vae.image_seq_len))
    # without the files: the network alone, for weights a DALL-E checkpoint carries
    rebuilt = pretrained_vae_from_config(json.loads(json.dumps(config)))
    assert type(rebuilt) is type(vae) and rebuilt.config() == config and _frozen(rebuilt)
    assert not torch.equal(rebuilt.decode(ids), vae.decode(ids))
    rebuilt.load_state_dict(vae.state_dict())
    assert torch.equal(rebuilt.decode(ids), vae.decode(ids))
    # from the recorded files, checked against their sha256
    reloaded = pretrained_vae_from_config(config, load_weights=True)
    assert torch.equal(reloaded.decode(ids), vae.decode(ids))
    files[0].write_bytes(files[0].read_bytes() + b"\0")
    with pytest.raises(UserError, match=f"{files[0].name} has changed since it was recorded"):
        pretrained_vae_from_config(config, load_weights=True)
    with pytest.raises(UserError, match="unknown pretrained VAE class 'DiscreteVAE'"):
        pretrained_vae_from_config({**config, "class": "DiscreteVAE"})
    with pytest.raises(UserError, match=r"config lacks 'sha256': it is damaged"):
        pretrained_vae_from_config({k: v for k, v in config.items() if k != "sha256"})


@pytest.mark.parametrize("kind", ["vqgan", "openai"])
def test_dalle_trains_and_generates_on_a_pretrained_vae(tmp_path, kind):
    if kind == "vqgan":
        vae = VQGanVAE(*_taming_files(tmp_path)[1:])
    else:
        vae = OpenAIDiscreteVAE(*_openai_files(tmp_path)[2:], image_size=32)
    dalle = small_dalle(vae)
    assert dalle.image_seq_len == vae.image_seq_len and dalle.num_image_tokens == N_EMBED
    text = torch.randint(1, 50, (2, 6))
    images = torch.rand(2, 3, 32, 32)
    dalle.train()
    loss = dalle(text, images, return_loss=True)
    assert torch.isfinite(loss)
    loss.backward()
    assert dalle.text_emb.weight.grad is not None
    assert all(p.grad is None for p in vae.parameters()) and _frozen(vae)
    # pixels and the VAE's token ids are the same input
    torch.testing.assert_close(loss, dalle(text, vae.get_codebook_indices(images), return_loss=True))
    out = dalle.generate_images(text, filter_thres=0.9)
    assert out.shape == (2, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    # what a DALL-E checkpoint needs: the VAE's config (no files) and the state dict, which holds the VAE's
    clone = DALLE(vae=pretrained_vae_from_config(json.loads(json.dumps(vae.config()))), **dalle.config())
    clone.load_state_dict(dalle.state_dict())
    assert torch.equal(clone(text, images, return_loss=True), dalle(text, images, return_loss=True))


@pytest.mark.parametrize("kind", ["taming", "openai"])
def test_train_dalle_on_a_pretrained_vae_then_generate(tmp_path, kind):
    """train_dalle.py --taming (or OpenAI's files) end to end: the DALL-E checkpoint records which pretrained
    VAE it was trained with (paths and hashes) and carries its weights, so generate.py needs nothing else."""
    if kind == "taming":
        _, ckpt, config = _taming_files(tmp_path)
        flags = ["--taming", "--vqgan_model_path", ckpt, "--vqgan_config_path", config]
        files = [ckpt, config]
    else:
        _, _, enc, dec = _openai_files(tmp_path)
        flags = ["--openai_enc_path", enc, "--openai_dec_path", dec, "--image_size", "32"]
        files = [enc, dec]
    out = tmp_path / "dalle"
    run_cmd([sys.executable, ROOT / "train_dalle.py", *flags, "--output", out, *TINY_DALLE.split(),
             "--batch_size", "4", "--max_steps", "2", "--sample_every", "2"])  # fmt: skip
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["vae"]["kind"] == "pretrained"
    recorded = json.dumps(meta["vae"]["config"])
    for file in files:
        assert str(file.resolve()) in recorded and hashlib.sha256(file.read_bytes()).hexdigest() in recorded
    for file in files:
        file.unlink()  # the DALL-E checkpoint alone is enough from here on
    proc = run_cmd([sys.executable, ROOT / "generate.py", "--dalle_path", out, "--text", "a red circle",
                    "--num_images", "2", "--outputs_dir", tmp_path / "gen"])  # fmt: skip
    assert (tmp_path / "gen" / "a_red_circle" / "1.png").is_file(), proc.stdout


def test_two_vaes_are_refused(tmp_path):
    _, ckpt, config = _taming_files(tmp_path)
    proc = run_cmd([sys.executable, ROOT / "train_dalle.py", "--vae_path", tmp_path, "--taming",
                    "--vqgan_model_path", ckpt, "--vqgan_config_path", config, "--output", tmp_path / "o"],
                   expect=2)  # fmt: skip
    assert "--vae_path and --taming name two VAEs: keep one" in proc.stderr
    proc = run_cmd(
        [sys.executable, ROOT / "train_dalle.py", "--taming", "--output", tmp_path / "o"], expect=2
    )
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr


def test_taming_without_paths_downloads_once_into_the_cache(tmp_path):
    """--taming alone fetches the VQGAN (here from a local server standing in for DALLE-pytorch's URLs)
    into the cache once; the next run finds it there with the server gone; no server is a clear error."""
    served = tmp_path / "served"
    served.mkdir()
    _taming_files(served)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=served, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {
        "DALLE_DIST_CACHE": str(tmp_path / "cache"),
        "DALLE_DIST_VQGAN_MODEL_URL": f"http://127.0.0.1:{port}/last.ckpt",
        "DALLE_DIST_VQGAN_CONFIG_URL": f"http://127.0.0.1:{port}/project.yaml",
    }
    train = [sys.executable, ROOT / "train_dalle.py", "--taming", *TINY_DALLE.split(), "--batch_size", "4",
             "--max_steps", "1", "--sample_every", "100"]  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        first = run_cmd([*train, "--output", tmp_path / "one"], env=env)
    finally:
        server.kill()
        server.wait()
    assert first.stdout.count("downloading http://127.0.0.1") == 2, first.stdout
    cached = tmp_path / "cache" / "vqgan.1024.model.ckpt"
    assert cached.read_bytes() == (served / "last.ckpt").read_bytes()
    second = run_cmd([*train, "--output", tmp_path / "two"], env=env)  # the server is gone: the cache serves
    assert "downloading" not in second.stdout
    env["DALLE_DIST_CACHE"] = str(tmp_path / "empty-cache")
    proc = run_cmd([*train, "--output", tmp_path / "three"], env=env, expect=2)
    assert "could not download vqgan.1024.model.ckpt" in proc.stderr and "--vqgan_model_path" in proc.stderr
    assert not list((tmp_path / "empty-cache").glob(".*part*")), "no partial file left behind"
