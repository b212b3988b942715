"""python -m dalle_dist.convert: DALLE-pytorch 1.6.6 checkpoints (vae.pt, dalle.pt, a DeepSpeed folder) in.

The checkpoints are made here from our own small models: ``their_vae_state`` / ``their_dalle_state`` write
DALLE-pytorch's layout and key names (spelled out below from its source: nested conv + ReLU Sequentials,
LayerScale(PreNorm(cache and token-shift wrappers(...))) per layer, axial position tables, SharedEmbedding),
so a converted checkpoint must give back the original weights bit for bit. LayerScale factors are powers of
two: dividing them out here and folding them back in the converter is exact.
"""

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cmd
from torch import nn

from dalle_dist import DALLE, DiscreteVAE
from dalle_dist.checkpoint import load_dalle, load_vae
from dalle_dist.convert import main
from dalle_dist.models.pretrained import VQGanVAE
from dalle_dist.models.vqgan import VQModel

CONVERT = [sys.executable, "-m", "dalle_dist.convert"]
VAE_HPARAMS = dict(
    image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8, num_resnet_blocks=1
)
VOCAB = 50  # words of the test tokenizer, [PAD] included


# ----------------------------------------------------------------------------------- their layout
def _their_children(seq: nn.Sequential) -> dict[str, str]:
    """Our child index -> theirs: DALLE-pytorch nests every (de)convolution that a ReLU follows with it in a
    Sequential of its own (``encoder.{i}.0``); other children stand alone."""
    children, out, i, j = list(seq), {}, 0, 0
    while j < len(children):
        pair = j + 1 < len(children) and isinstance(children[j + 1], nn.ReLU)
        out[str(j)] = f"{i}.0" if pair else str(i)
        j, i = j + (2 if pair else 1), i + 1
    return out


def their_vae_state(vae: DiscreteVAE) -> dict[str, torch.Tensor]:
    tables = {"encoder": _their_children(vae.encoder), "decoder": _their_children(vae.decoder)}
    out = {}
    for key, value in vae.state_dict().items():
        part, _, rest = key.partition(".")
        if part in tables:
            index, _, param = rest.partition(".")
            key = f"{part}.{tables[part][index]}.{param}"
        out[key] = value.clone()
    return out


# PreNorm.fn: attention inside CachedAs (and with shift_tokens CachedAs(PreShiftToken(...)) around that);
# the feed-forward bare (or in the same two shift wrappers), its Linear layers at net.0 and net.3
ATTN_INNER = {False: "fn.fn.fn.", True: "fn.fn.fn.fn.fn."}
FF_INNER = {False: "fn.fn.net.", True: "fn.fn.fn.fn.net."}


def _weight_bias(out: dict, prefix: str, module: nn.Module, divide_by: float = 1.0) -> None:
    out[prefix + "weight"], out[prefix + "bias"] = module.weight / divide_by, module.bias / divide_by


def their_dalle_state(dalle: DALLE, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """DALLE-pytorch's state dict of ``dalle`` (built with rotary_emb=False), every LayerScale ``scale``."""
    cfg, t = dalle.config(), dalle.transformer
    shift, sandwich, f, dim = cfg["shift_tokens"], cfg["sandwich_norm"], dalle.image_fmap_size, cfg["dim"]
    # DALLE-pytorch's VQGanVAE keeps taming's VQModel as .model, with our names
    vae_state = their_vae_state(dalle.vae) if isinstance(dalle.vae, DiscreteVAE) else dalle.vae.state_dict()
    out = {f"vae.{k}": v for k, v in vae_state.items()}
    _weight_bias(out, "to_logits.0.", dalle.to_logits_norm)
    _weight_bias(out, "to_logits.1.", dalle.to_logits)
    if cfg["share_input_output_emb"]:
        for emb in ("text_emb", "image_emb"):  # SharedEmbedding keeps the output layer as its submodule
            _weight_bias(out, f"{emb}.linear.", dalle.to_logits)
    else:
        out["text_emb.weight"], out["image_emb.weight"] = dalle.text_emb.weight, dalle.image_emb.weight
    out["text_pos_emb.weight"] = dalle.text_pos_emb.weight
    out["image_pos_emb.weights_0"] = dalle.image_row_emb.weight.reshape(1, f, 1, dim)
    out["image_pos_emb.weights_1"] = dalle.image_col_emb.weight.reshape(1, 1, f, dim)
    # LayerScale multiplies each branch's output by `scale`: theirs holds our last affine map divided by it
    last = 1.0 if sandwich else scale
    for layer in range(t.depth):
        for attn in (True, False):
            branch = t.attns[str(t.attn_ids[layer])] if attn else t.ffs[str(t.ff_ids[layer])]
            if cfg["reversible"]:
                p = f"transformer.layers.blocks.{layer}.{'f' if attn else 'g'}.net."
            else:
                p = f"transformer.layers.layers.{layer}.{0 if attn else 1}."
            out[p + "scale"] = torch.full((1, 1, dim), scale)
            _weight_bias(out, p + "fn.norm.", branch.norm)
            if sandwich:
                _weight_bias(out, p + "fn.norm_out.", branch.post_norm, scale)
            inner = p + (ATTN_INNER if attn else FF_INNER)[shift]
            if attn:
                out[inner + "to_qkv.weight"] = branch.fn.to_qkv.weight
                _weight_bias(out, inner + "to_out.0.", branch.fn.to_out, last)
            else:
                _weight_bias(out, inner + "0.", branch.fn.proj_in)
                _weight_bias(out, inner + "3.", branch.fn.proj_out, last)
    return {k: v.detach().clone() for k, v in out.items()}


# ----------------------------------------------------------------------------------- fixtures
def tiny_vae() -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(**VAE_HPARAMS)


def tiny_dalle(**hparams) -> tuple[DALLE, dict]:
    """Our DALLE with DALLE-pytorch ``hparams`` (their names; rotary off, as train_dalle.py's default)."""
    hp = dict(num_text_tokens=VOCAB, text_seq_len=6, dim=32, depth=2, heads=2, dim_head=16, rotary_emb=False)
    hp.update(hparams)
    torch.manual_seed(0)
    ours = {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
    return DALLE(vae=tiny_vae(), **ours), hp


def save_dalle_pt(path: Path, dalle: DALLE, hparams: dict, **extra) -> Path:
    obj = {
        "hparams": hparams,
        "vae_params": VAE_HPARAMS,
        "epoch": 3,
        "version": "1.6.6",
        "vae_class_name": "DiscreteVAE",
        "weights": their_dalle_state(dalle),
        "opt_state": {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]},
        "scheduler_state": None,
        **extra,
    }
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """A Hugging Face tokenizer.json whose id 0 is [PAD], as train_dalle.py --hug --bpe_path reads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def same_outputs(a: DALLE, b: DALLE) -> None:
    torch.manual_seed(1)
    text = torch.randint(1, VOCAB, (2, 6))
    text[0, 4:] = 0
    image = torch.randint(0, 32, (2, 16))
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(text, image), b(text, image))
        assert torch.equal(a(text, image, return_loss=True), b(text, image, return_loss=True))


def convert_in_process(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------- conversions
def test_vae_pt_converts_exactly(tmp_path):
    vae = tiny_vae()
    torch.save({"hparams": VAE_HPARAMS, "weights": their_vae_state(vae)}, tmp_path / "vae.pt")
    proc = run_cmd([*CONVERT, tmp_path / "vae.pt", "--output", tmp_path / "out"], timeout=120)
    assert "num_resnet_blocks=1" in proc.stdout and "channels=3 (their default)" in proc.stdout
    converted, _ = load_vae(tmp_path / "out")
    same_weights(vae, converted)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(vae.get_codebook_indices(images), converted.get_codebook_indices(images))
    with torch.no_grad():
        codes = torch.randint(0, 32, (2, 16))
        assert torch.equal(vae.decode(codes), converted.decode(codes))


def test_dalle_pt_converts_exactly_and_generates(tmp_path, tokenizer_file):
    dalle, hp = tiny_dalle(depth=3, shift_tokens=True, attn_types=("full", "axial_row", "axial_col"))
    save_dalle_pt(tmp_path / "dalle.pt", dalle, hp)
    out = tmp_path / "converted"
    proc = run_cmd(
        [*CONVERT, tmp_path / "dalle.pt", "--output", out, "--bpe_path", tokenizer_file, "--hug"], timeout=120
    )
    assert (
        "attn_types=('full', 'axial_row', 'axial_col') -> ['full', 'axial_row', 'axial_col']" in proc.stdout
    )
    assert "sparse_attn=False (their default): dropped" in proc.stdout
    assert "not converted: opt_state" in proc.stdout
    converted, tokenizer, ckpt = load_dalle(out)
    assert tokenizer.vocab_size == VOCAB and ckpt.meta["converted_from"]["epoch"] == 3
    same_weights(dalle, converted)
    same_outputs(dalle, converted)
    run_cmd(
        [sys.executable, "generate.py", "--dalle_path", out, "--text", "w3 w7 w9", "--num_images", "2",
         "--batch_size", "2", "--outputs_dir", tmp_path / "samples", "--seed", "0", "--device", "cpu",
         "--top_k", "4"],
        timeout=120,
    )  # fmt: skip
    pngs = sorted(p.name for p in (tmp_path / "samples" / "w3_w7_w9").glob("*.png"))
    assert pngs == ["0.png", "1.png", "grid.png"]


def test_deepspeed_folder_converts(tmp_path, tokenizer_file, capsys, monkeypatch):
    """dalle-ds-cp/ as DeepSpeed's engine writes it (``latest``, global_stepN/mp_rank_00_model_states.pt with
    the module's state dict and the client state, ZeRO optimizer partitions, auxiliary.pt): fp16 weights
    (train_dalle.py --fp16), reversible, sandwich norm, shared output embedding and shared feed-forwards."""
    hp = dict(reversible=True, sandwich_norm=True, shift_tokens=False, share_input_output_emb=True)
    dalle, hp = tiny_dalle(depth=4, shared_ff_ids=("0", "1", "0", "1"), **hp)
    dalle.half().float()  # the fp32 values the fp16 copy holds exactly
    client = {
        "hparams": hp,
        "vae_params": VAE_HPARAMS,
        "epoch": 1,
        "version": "1.6.6",
        "vae_class_name": "DiscreteVAE",
    }
    folder = tmp_path / "dalle-ds-cp"
    tag = folder / "global_step40"
    tag.mkdir(parents=True)
    (folder / "latest").write_text("global_step40")
    (folder / "zero_to_fp32.py").write_text("# DeepSpeed's script\n")
    module = {k: v.half() for k, v in their_dalle_state(dalle).items()}
    states = {
        "module": module,
        "buffer_names": [],
        "optimizer": None,
        "param_shapes": [{k: v.shape for k, v in module.items()}],
        "lr_scheduler": None,
        "skipped_steps": 0,
        "global_steps": 40,
        "global_samples": 160,
        "dp_world_size": 1,
        "mp_world_size": 1,
        "ds_config": {"train_batch_size": 4, "fp16": {"enabled": True}, "zero_optimization": {"stage": 1}},
        "ds_version": "0.19.8",
        **client,
    }
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    torch.save(
        {"optimizer_state_dict": {"flat": torch.zeros(8)}}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    )
    torch.save({**client, "weights": "To get a working standard checkpoint, ..."}, folder / "auxiliary.pt")
    if importlib.util.find_spec("deepspeed") is not None:
        # a DeepSpeed class in the file (its fp16 loss scaler): distributed.deepspeed.safe_loading allows it
        add_scaler = (
            "import sys, torch; from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler; "
            "s = torch.load(sys.argv[1], weights_only=True); "
            "s['optimizer'] = {'loss_scaler': DynamicLossScaler(2.0 ** 16, 1000, 1, False, True)}; "
            "torch.save(s, sys.argv[1])"
        )
        run_cmd([sys.executable, "-c", add_scaler, tag / "mp_rank_00_model_states.pt"], timeout=120)
    out = tmp_path / "converted"
    proc = run_cmd([*CONVERT, folder, "--output", out, "--bpe_path", tokenizer_file, "--hug"], timeout=120)
    assert "global_step40 (ZeRO stage 1)" in proc.stdout and "float16: widened to float32" in proc.stdout
    converted, _, _ = load_dalle(out)
    same_weights(dalle, converted)
    same_outputs(dalle, converted)

    # in this process the folder's plain files need no DeepSpeed classes (and DeepSpeed stays unimported)
    monkeypatch.setattr("dalle_dist.distributed.deepspeed.safe_loading", contextlib.nullcontext)
    # its auxiliary.pt alone has no weights
    code, _, err = convert_in_process(capsys, folder / "auxiliary.pt", "--output", tmp_path / "o")
    assert code == 2 and f"pass its folder {folder}" in err
    # without 'latest', several tags need --tag (keep_n_checkpoints leaves several)
    (folder / "latest").unlink()
    states["ds_config"]["zero_optimization"]["stage"] = 3  # ZeRO-3: 'module' holds placeholders
    (folder / "global_step80").mkdir()
    torch.save(states, folder / "global_step80" / "mp_rank_00_model_states.pt")
    tok = ["--bpe_path", tokenizer_file, "--hug"]
    code, _, err = convert_in_process(capsys, folder, "--output", tmp_path / "o", *tok)
    assert code == 2 and "global_step40, global_step80" in err and "--tag" in err
    code, _, err = convert_in_process(
        capsys, folder, "--output", tmp_path / "o", "--tag", "global_step80", *tok
    )
    assert code == 2 and "ZeRO stage 3" in err and "zero_to_fp32.py" in err
    code, _, err = convert_in_process(
        capsys, folder, "--output", tmp_path / "o", "--tag", "global_step40", *tok
    )
    if importlib.util.find_spec("deepspeed") is None:
        assert code == 0, err
    else:  # the loss scaler added above, read here without DeepSpeed's classes allowed: refused in words
        assert code == 2 and "Unsupported global: GLOBAL deepspeed.runtime.fp16.loss_scaler" in err, err


def test_tokenizer_whose_id_0_is_a_word_moves_text_rows_up(tmp_path, capsys):
    """A Hugging Face file without a padding id 0: DALLE-pytorch used its raw ids, dalle_dist numbers them
    from 1. The converted model gives the same logits for the same words, one text column further up."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"!": 0, **{f"w{i}": i for i in range(1, VOCAB)}}, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tok.json"))
    dalle, hp = tiny_dalle(shift_tokens=True)
    save_dalle_pt(tmp_path / "dalle.pt", dalle, hp)
    out = tmp_path / "converted"
    code, stdout, err = convert_in_process(
        capsys, tmp_path / "dalle.pt", "--output", out, "--bpe_path", tmp_path / "tok.json", "--hug"
    )
    assert code == 0, err
    assert f"num_text_tokens {VOCAB} -> {VOCAB + 1}" in stdout
    converted, tokenizer, _ = load_dalle(out)
    assert tokenizer.encode("w3 w7") == [4, 8]
    text, image = torch.tensor([[3, 7, 9, 0, 0, 0]]), torch.randint(0, 32, (1, 16))
    dalle.eval(), converted.eval()
    with torch.no_grad():
        a, b = dalle(text, image), converted(torch.where(text > 0, text + 1, text), image)
        la = dalle(text, image, return_loss=True)
        lb = converted(torch.where(text > 0, text + 1, text), image, return_loss=True)
    n = VOCAB + 6  # text columns: vocabulary and one padding token per position
    exact = dict(rtol=1e-6, atol=1e-6)  # the same sums; only the matrix products' blocking may differ
    torch.testing.assert_close(a[:, :6, :n], b[:, :6, 1 : n + 1], **exact)
    torch.testing.assert_close(a[:, 6:, n:], b[:, 6:, n + 1 :], **exact)
    assert (b[:, :6, 0] < -9000).all()  # our padding id is never predicted
    torch.testing.assert_close(la, lb)


# ----------------------------------------------------------------------------------- refusals
def test_unsupported_option_is_refused_in_words(tmp_path, tokenizer_file):
    dalle, hp = tiny_dalle()
    save_dalle_pt(tmp_path / "dalle.pt", dalle, {**hp, "rotary_emb": True})
    proc = run_cmd(
        [
            *CONVERT,
            tmp_path / "dalle.pt",
            "--output",
            tmp_path / "out",
            "--bpe_path",
            tokenizer_file,
            "--hug",
        ],
        expect=2,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "rotary_emb=True cannot be converted" in lines[0] and "without --rotary_emb" in lines[0]
    assert not (tmp_path / "out").exists()


class Payload:
    """Unpickling this would create ``marker`` (by calling open): what a crafted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"hparams": VAE_HPARAMS, "weights": {}, "extra": Payload(marker)}, tmp_path / "vae.pt")
    proc = run_cmd([*CONVERT, tmp_path / "vae.pt", "--output", tmp_path / "out"], expect=2, timeout=120)
    assert "refused to load" in proc.stderr and "GLOBAL io.open" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


REFUSED = {
    "stable": ({"stable": True}, "stable=True cannot be converted"),
    "conv_like": ({"attn_types": ("full", "conv_like")}, "'conv_like' lets an image token see"),
    "sparse": ({"attn_types": ("sparse",)}, "'sparse' layers ran DeepSpeed's block-sparse kernel"),
    "shift_odd_dim": ({"dim": 30, "heads": 2}, "with dim=30 (not a multiple of 4)"),
    "unknown_option": ({"ff_mult": 2}, "ff_mult=2 is not an option of DALLE-pytorch 1.6.6's DALLE"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_options_without_an_equivalent_are_refused(tmp_path, tokenizer_file, capsys, case):
    change, message = REFUSED[case]
    dalle, hp = tiny_dalle()
    save_dalle_pt(tmp_path / "dalle.pt", dalle, {**hp, **change})
    code, _, err = convert_in_process(
        capsys, tmp_path / "dalle.pt", "--output", tmp_path / "out", "--bpe_path", tokenizer_file, "--hug"
    )
    assert code == 2 and message in err, err


def test_shared_layers_whose_norms_differ_are_refused(tmp_path, tokenizer_file, capsys):
    """DALLE-pytorch shares the attention of shared_attn_ids, not the LayerNorm and LayerScale around it."""
    dalle, hp = tiny_dalle(depth=2, shared_attn_ids=(0, 0))
    state = their_dalle_state(dalle)
    state["transformer.layers.layers.1.0.scale"] = torch.full((1, 1, 32), 0.25)
    torch.save({"hparams": hp, "vae_params": VAE_HPARAMS, "weights": state}, tmp_path / "dalle.pt")
    code, _, err = convert_in_process(
        capsys, tmp_path / "dalle.pt", "--output", tmp_path / "out", "--bpe_path", tokenizer_file, "--hug"
    )
    assert code == 2 and "shared_attn_ids=[0, 0] cannot be converted: layers 0 and 1 share" in err, err


def test_tokenizer_is_required_and_must_match(tmp_path, tokenizer_file, capsys):
    dalle, hp = tiny_dalle()
    save_dalle_pt(tmp_path / "dalle.pt", dalle, hp)
    code, _, err = convert_in_process(capsys, tmp_path / "dalle.pt", "--output", tmp_path / "out")
    assert code == 2 and "--bpe_path FILE" in err and "OpenAI's simple BPE" in err
    save_dalle_pt(tmp_path / "other.pt", *tiny_dalle(num_text_tokens=60))
    code, _, err = convert_in_process(
        capsys, tmp_path / "other.pt", "--output", tmp_path / "out", "--bpe_path", tokenizer_file, "--hug"
    )
    assert code == 2 and "num_text_tokens=60" in err


def test_pretrained_vae_dalle_is_refused(tmp_path, tokenizer_file, capsys):
    dalle, hp = tiny_dalle()
    save_dalle_pt(tmp_path / "dalle.pt", dalle, hp, vae_params=None, vae_class_name="OpenAIDiscreteVAE")
    code, _, err = convert_in_process(
        capsys, tmp_path / "dalle.pt", "--output", tmp_path / "out", "--bpe_path", tokenizer_file, "--hug"
    )
    assert code == 2 and "vae_params=None cannot be converted" in err and "OpenAIDiscreteVAE" in err


def test_bad_input_is_one_error_line(tmp_path, capsys):
    vae = tiny_vae()
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save(vae.state_dict(), tmp_path / "plain.pt")
    wrong = {**VAE_HPARAMS, "hidden_dim": 16}
    torch.save({"hparams": wrong, "weights": their_vae_state(vae)}, tmp_path / "wrong.pt")
    torch.save({"hparams": VAE_HPARAMS, "weights": their_vae_state(vae)}, tmp_path / "vae.pt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    cases = {
        tmp_path / "missing.pt": "does not exist",
        tmp_path / "notes.txt": "is not a PyTorch checkpoint file",
        tmp_path / "plain.pt": "is not a DALLE-pytorch checkpoint: it has no 'hparams'",
        tmp_path
        / "wrong.pt": "has shape (8, 3, 4, 4), but the model its hparams describe needs (16, 3, 4, 4)",
        tmp_path: "is neither a DeepSpeed checkpoint folder",
    }
    for path, message in cases.items():
        code, _, err = convert_in_process(capsys, path, "--output", tmp_path / "out")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (path, err)
    code, _, err = convert_in_process(capsys, tmp_path / "vae.pt", "--output", tmp_path / "taken")
    assert code == 2 and "already exists" in err
    code, _, err = convert_in_process(capsys, tmp_path / "vae.pt", "--output", tmp_path / "o", "--hug")
    assert code == 2 and "a VAE has no tokenizer" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------- trained on a VQGAN
# DALLE-pytorch reads a VQGAN as 256 px images halved log2(resolution / attn_resolutions[0]) times: a small
# one of that geometry (4 halvings: 16 x 16 codes)
VQGAN_DD = dict(double_z=False, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[16], dropout=0.0)  # fmt: skip


def _vqgan_files(folder: Path, dd: dict = VQGAN_DD) -> tuple[Path, Path]:
    torch.manual_seed(2)
    net = VQModel(dd, 32, 8)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save({"state_dict": net.state_dict()}, folder / "last.ckpt")
    params = {"embed_dim": 8, "n_embed": 32, "ddconfig": dd}
    config = {"model": {"target": "taming.models.vqgan.VQModel", "params": params}}
    (folder / "model.yaml").write_text(yaml.safe_dump(config))
    return folder / "last.ckpt", folder / "model.yaml"


def test_dalle_trained_on_a_vqgan_converts_exactly(tmp_path, tokenizer_file, capsys):
    """train_dalle.py --taming's dalle.pt (vae_params None, vae_class_name 'VQGanVAE', the VQGAN's weights
    under vae.model.* with its training loss beside them) converts given the taming config; without it, or
    with one DALLE-pytorch could not have used, the error says what to pass."""
    ckpt, config = _vqgan_files(tmp_path)
    vae = VQGanVAE(ckpt, config)
    torch.manual_seed(0)
    hp = dict(num_text_tokens=VOCAB, text_seq_len=6, dim=32, depth=2, heads=2, dim_head=16, rotary_emb=False)
    dalle = DALLE(vae=vae, **hp)
    path = save_dalle_pt(tmp_path / "dalle.pt", dalle, hp, vae_params=None, vae_class_name="VQGanVAE")
    obj = torch.load(path, weights_only=True)
    obj["weights"]["vae.model.loss.logvar"] = torch.zeros(())  # taming's VQModel built with its lossconfig
    torch.save(obj, path)
    tok = ["--bpe_path", tokenizer_file, "--hug"]

    code, _, err = convert_in_process(capsys, path, "--output", tmp_path / "none", *tok)
    assert code == 2 and "--vqgan_config_path FILE.yaml, or --taming" in err and len(err.splitlines()) == 1
    (tmp_path / "wrong").mkdir()
    _, wrong = _vqgan_files(tmp_path / "wrong", {**VQGAN_DD, "resolution": 128})
    code, _, err = convert_in_process(
        capsys, path, "--output", tmp_path / "none", *tok, "--vqgan_config_path", wrong
    )
    assert code == 2 and "not the config of a VQGAN DALLE-pytorch could train on" in err
    assert not (tmp_path / "none").exists()

    out = tmp_path / "converted"
    proc = run_cmd([*CONVERT, path, "--output", out, *tok, "--vqgan_config_path", config], timeout=120)
    assert "16 x 16 per 256 px image" in proc.stdout and "1 vae.model.loss.* tensors" in proc.stdout
    converted, _, ckpt_meta = load_dalle(out)
    assert ckpt_meta.meta["vae"]["config"]["class"] == "VQGanVAE"
    same_weights(dalle, converted)
    torch.manual_seed(1)
    text, codes = torch.randint(1, VOCAB, (2, 6)), torch.randint(0, 32, (2, 256))
    images = torch.rand(2, 3, 256, 256)
    dalle.eval(), converted.eval()
    with torch.no_grad():
        assert torch.equal(dalle(text, codes), converted(text, codes))
        assert torch.equal(vae.get_codebook_indices(images), converted.vae.get_codebook_indices(images))
