"""minDALL-E's published folder converted (issue [4/6]): a tiny structural replica of ``1.3B/`` (its file
names, config sections, ``{"state_dict": ...}`` checkpoints, stage-2 key names and CharBPE tokenizer files;
docs/pretrained_layouts.md) is converted by ``python -m dalle_dist.convert`` in its own process, and the
converted DALL-E is checked against minDALL-E's GPT forward written here from its description, over the
file's own tensors: the same text and image logits, the same greedy samples and pixels, the same token ids.
Then it fine-tunes with train_dalle.py, resumes exactly and generates; hostile and wrong files are refused.

Stage 1 is taming-transformers' VQGAN, whose module our ``models/vqgan.py`` reproduces
(tests/test_pretrained.py); its replica weights are written with that module, and the converted VAE must
hold them unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT, launch_2_ranks, run_cmd
from safetensors.torch import load_file
from tokenizers import CharBPETokenizer

from dalle_dist.checkpoint import load_dalle
from dalle_dist.convert import main
from dalle_dist.data.synthetic import ShapesDataset
from dalle_dist.models.vqgan import VQModel, check_ddconfig

STAGE1 = dict(
    double_z=False,
    z_channels=16,
    resolution=16,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[8],
    pdrop=0.0,
)
N_EMBED, EMBED_DIM = 32, 8
DIM, LAYERS, HEADS, TEXT_LEN, IMAGE_LEN = 32, 2, 4, 12, 64  # 16 px, one halving: 8 x 8 codes
CAPTIONS = [
    "a red circle",
    "A Blue SQUARE on a white background",
    "a small green triangle on a black background",
]


def _write_tokenizer(folder: Path, pad_first: bool) -> CharBPETokenizer:
    """CharBPE files as minDALL-E ships them, trained on the shapes captions; ``[PAD]`` at id 0 or 1."""
    bpe = CharBPETokenizer(lowercase=True, unk_token="[UNK]")
    specials = ["[PAD]", "[UNK]"] if pad_first else ["[UNK]", "[PAD]"]
    bpe.train_from_iterator(ShapesDataset(16, 300).captions(), vocab_size=90, special_tokens=specials)
    (folder / "tokenizer").mkdir(parents=True)
    bpe.save_model(str(folder / "tokenizer"), "bpe-16k")
    # what minDALL-E's build_tokenizer reads back
    theirs = CharBPETokenizer.from_file(
        str(folder / "tokenizer/bpe-16k-vocab.json"),
        str(folder / "tokenizer/bpe-16k-merges.txt"),
        unk_token="[UNK]",
        lowercase=True,
    )
    theirs.add_special_tokens(["[PAD]"])
    return theirs


def _stage2_state(vocab_txt: int) -> dict[str, torch.Tensor]:
    """Random weights under minDALL-E's Transformer1d names (biases on, norms away from 1 and 0)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    w = {
        "tok_emb_txt.weight": r(vocab_txt, DIM),
        "tok_emb_img.weight": r(N_EMBED, DIM),
        "pos_emb_txt.weight": r(TEXT_LEN, DIM),
        "pos_emb_img.weight": r(IMAGE_LEN, DIM),
        "ln_f.weight": 1 + r(DIM, scale=0.1),
        "ln_f.bias": r(DIM, scale=0.1),
        "head_txt.weight": r(vocab_txt, DIM),
        "head_img.weight": r(N_EMBED, DIM),
    }
    for i in range(LAYERS):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            w[f"{b}{ln}.weight"], w[f"{b}{ln}.bias"] = 1 + r(DIM, scale=0.1), r(DIM, scale=0.1)
        for name in ("query", "key", "value", "proj"):
            w[f"{b}attn.{name}.weight"], w[f"{b}attn.{name}.bias"] = r(DIM, DIM), r(DIM, scale=0.05)
        w[f"{b}mlp.0.weight"], w[f"{b}mlp.0.bias"] = r(4 * DIM, DIM), r(4 * DIM, scale=0.05)
        w[f"{b}mlp.2.weight"], w[f"{b}mlp.2.bias"] = r(DIM, 4 * DIM), r(DIM, scale=0.05)
    return w


def make_folder(folder: Path, pad_first: bool = False) -> dict:
    """A tiny minDALL-E folder; returns what the checks need (their tokenizer, weights, VQGAN)."""
    bpe = _write_tokenizer(folder, pad_first)
    vocab_txt = bpe.get_vocab_size()
    config = {
        "dataset": {"tokenizer_type": "CharBPE", "context_length": TEXT_LEN, "image_resolution": 16},
        "stage1": {"type": "vqgan", "embed_dim": EMBED_DIM, "n_embed": N_EMBED, "hparams": STAGE1},
        "stage2": {
            "type": "transformer1d",
            "vocab_size_txt": vocab_txt,
            "vocab_size_img": N_EMBED,
            "hparams": {
                "embed_dim": DIM,
                "n_layers": LAYERS,
                "n_heads": HEADS,
                "n_dense_layers": LAYERS,
                "ctx_len_img": IMAGE_LEN,
                "ctx_len_txt": TEXT_LEN,
            },
        },
        "optimizer": {"opt_type": "adamW", "base_lr": 1e-4},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    torch.manual_seed(1)
    dd = check_ddconfig({**{k: v for k, v in STAGE1.items() if k != "pdrop"}, "dropout": 0.0})
    vqgan = VQModel(dd, N_EMBED, EMBED_DIM).eval()
    with torch.no_grad():
        for p in vqgan.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    stage1 = {"state_dict": vqgan.state_dict()}
    if pad_first:  # a stage 1 saved by VQGAN training keeps its loss: dropped in conversion
        stage1["state_dict"]["loss.logvar"] = torch.zeros(())
    torch.save(stage1, folder / "stage1_last.ckpt")
    stage2 = _stage2_state(vocab_txt)
    torch.save({"state_dict": stage2}, folder / "stage2_last.ckpt")
    return {"bpe": bpe, "stage2": stage2, "vqgan": vqgan, "pad": bpe.token_to_id("[PAD]")}


def reference_forward(w: dict[str, torch.Tensor], text: torch.Tensor, codes: torch.Tensor) -> tuple:
    """minDALL-E's Transformer1d over its own names, from its description: token + learned position
    embeddings, [text; image] under one causal mask, pre-norm blocks with separate q / k / v and an exact
    GELU MLP, ln_f; text logits from positions 0..N-2, image logits from N-1 on (one more than ``codes``:
    the last predicts the next code)."""
    n_text = text.shape[1]
    x = torch.cat(
        [
            w["tok_emb_txt.weight"][text] + w["pos_emb_txt.weight"][:n_text],
            w["tok_emb_img.weight"][codes] + w["pos_emb_img.weight"][: codes.shape[1]],
        ],
        dim=1,
    )
    b, n, _ = x.shape
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i in range(LAYERS):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (DIM,), w[p + "ln1.weight"], w[p + "ln1.bias"])
        q, k, v = (
            F.linear(h, w[f"{p}attn.{m}.weight"], w[f"{p}attn.{m}.bias"])
            .view(b, n, HEADS, -1)
            .transpose(1, 2)
            for m in ("query", "key", "value")
        )
        att = (q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)).masked_fill(~causal, float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, DIM)
        x = x + F.linear(y, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (DIM,), w[p + "ln2.weight"], w[p + "ln2.bias"])
        h = F.gelu(F.linear(h, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"]))
        x = x + F.linear(h, w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
    x = F.layer_norm(x, (DIM,), w["ln_f.weight"], w["ln_f.bias"])
    return x[:, : n_text - 1] @ w["head_txt.weight"].T, x[:, n_text - 1 :] @ w["head_img.weight"].T


def their_ids(bpe: CharBPETokenizer, caption: str) -> list[int]:
    """minDALL-E's text input: the caption's ids, [PAD] to the context length (no begin or end token)."""
    ids = bpe.encode(caption).ids[:TEXT_LEN]
    return ids + [bpe.token_to_id("[PAD]")] * (TEXT_LEN - len(ids))


def convert(folder: Path, output: Path, expect: int = 0) -> str:
    done = run_cmd([sys.executable, "-m", "dalle_dist.convert", folder, "--output", output], expect=expect)
    return done.stdout + done.stderr


@pytest.fixture(scope="module", params=[False, True], ids=["pad-id-1", "pad-id-0"])
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("mindalle")
    made = make_folder(root / "1.3B", pad_first=request.param)
    out = convert(root / "1.3B", root / "converted")
    return {**made, "root": root, "report": out, "ckpt": root / "converted"}


# ----------------------------------------------------------------------------------------- the checks
def test_the_report_says_what_was_mapped(converted):
    report, pad = converted["report"], converted["pad"]
    assert "minDALL-E folder" in report and "not converted: optimizer" in report
    assert ("trade ids" in report) == (pad != 0)
    assert ("loss.* tensors" in report) == (pad == 0)
    assert f"wrote {converted['ckpt']}" in report
    meta = json.loads((converted["ckpt"] / "meta.json").read_text())
    assert meta["converted_from"]["format"] == "minDALL-E" and meta["converted_from"]["pad_id_in_file"] == pad
    assert meta["model"]["text_pad_id"] == 0 and meta["model"]["image_pos_emb"] == "absolute"
    assert meta["vae"]["config"]["class"] == "VQGanVAE"


def test_token_ids_are_theirs_with_pad_at_zero(converted):
    dalle, tokenizer, _ = load_dalle(converted["ckpt"])
    bpe, pad = converted["bpe"], converted["pad"]
    trade = {0: pad, pad: 0}
    assert tokenizer.vocab_size == bpe.get_vocab_size() == dalle.num_text_tokens
    for caption in CAPTIONS:
        ours = tokenizer.tokenize([caption], TEXT_LEN, truncate_text=True)[0]
        internal = dalle.text_ids(ours[None])[0].tolist()  # padding (0) as the model sees it
        assert [trade.get(i, i) for i in internal] == their_ids(bpe, caption), caption
    assert tokenizer.encode("A RED Circle") == tokenizer.encode("a red circle")  # lower-cased as theirs


def test_logits_equal_mindalles_forward(converted):
    dalle, tokenizer, _ = load_dalle(converted["ckpt"])
    dalle.eval()
    bpe, pad, w = converted["bpe"], converted["pad"], converted["stage2"]
    text = tokenizer.tokenize(CAPTIONS, TEXT_LEN, truncate_text=True)
    codes = torch.randint(0, N_EMBED, (len(CAPTIONS), IMAGE_LEN), generator=torch.Generator().manual_seed(2))
    theirs = torch.tensor([their_ids(bpe, c) for c in CAPTIONS])
    with torch.no_grad():
        logits = dalle(text, codes)
        ref_text, ref_image = reference_forward(w, theirs, codes)
    perm = torch.arange(dalle.num_text_tokens)
    perm[0], perm[pad] = pad, 0  # our text id j is their id perm[j]
    s = TEXT_LEN - 1
    torch.testing.assert_close(
        logits[:, :s, : dalle.num_text_tokens], ref_text[..., perm], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        logits[:, s:, dalle.num_text_tokens :], ref_image[:, :-1], rtol=1e-5, atol=1e-5
    )


def test_greedy_samples_and_pixels_equal_mindalles(converted):
    dalle, tokenizer, _ = load_dalle(converted["ckpt"])
    dalle.eval()
    bpe, w, vqgan = converted["bpe"], converted["stage2"], converted["vqgan"]
    text = tokenizer.tokenize(CAPTIONS[:2], TEXT_LEN, truncate_text=True)
    theirs = torch.tensor([their_ids(bpe, c) for c in CAPTIONS[:2]])
    codes = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(IMAGE_LEN):  # top_k=1: minDALL-E's sampling keeps the one largest logit
            _, image_logits = reference_forward(w, theirs, codes)
            codes = torch.cat([codes, image_logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        pixels = torch.clamp(vqgan.decode_indices(codes.view(2, 8, 8)) * 0.5 + 0.5, 0, 1)
        images = dalle.generate_images(text, filter_thres=1)  # a count of 1: greedy
        # the converted VQGAN also codes pixels as theirs does
        assert torch.equal(
            dalle.vae.get_codebook_indices(pixels), vqgan.encode_indices(pixels * 2 - 1).flatten(1)
        )
    torch.testing.assert_close(images, pixels, rtol=0, atol=1e-6)
    state = load_file(converted["ckpt"] / "model.safetensors")
    assert all(torch.equal(state[f"vae.model.{k}"], v) for k, v in vqgan.state_dict().items())


def test_fine_tune_resumes_exactly_and_generates(tmp_path, converted):
    """train_dalle.py --dalle_path (the converted model fine-tuned on the built-in shapes at the VQGAN's
    16 px): two steps, then --resume to four, equals four straight; the first step moved the weights; then
    generate.py with minDALL-E's count-style --top_k."""
    ckpt = converted["ckpt"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = ["--dalle_path", ckpt, "--dataset_size", "32", "--batch_size", "4", "--truncate_captions",
             "--save_every_n_steps", "2", "--sample_every", "100", "--learning_rate", "1e-3"]  # fmt: skip
    train = [sys.executable, ROOT / "train_dalle.py"]
    run_cmd([*train, "--output", straight, "--max_steps", "4", *flags])
    run_cmd([*train, "--output", split, "--max_steps", "2", *flags])
    run_cmd([*train, "--output", split, "--max_steps", "4", "--resume", *flags[2:]])
    a, b = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(split / "final" / "model.safetensors"),
    )
    start = load_file(ckpt / "model.safetensors")
    assert a.keys() == b.keys() == start.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image_head.weight"], start["image_head.weight"])  # it trained
    assert all(torch.equal(a[k], start[k]) for k in a if k.startswith("vae."))  # the VQGAN stays frozen
    out = tmp_path / "gen"
    run_cmd([sys.executable, ROOT / "generate.py", "--dalle_path", straight, "--text", "a red circle",
             "--num_images", "2", "--top_k", "4", "--outputs_dir", out])  # fmt: skip
    assert (out / "a_red_circle" / "1.png").is_file()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("stage", ["stage1_last.ckpt", "stage2_last.ckpt"])
def test_a_hostile_checkpoint_is_refused_unexecuted(tmp_path, converted, stage):
    folder = tmp_path / "1.3B"
    shutil.copytree(converted["root"] / "1.3B", folder)
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload(marker)}, folder / stage)
    out = convert(folder, tmp_path / "out", expect=2)
    assert f"refused to load {folder / stage}" in out and "nothing in it was run" in out
    assert not marker.exists() and not (tmp_path / "out").exists()


def _edit_config(folder: Path, edit) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    edit(config)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


BAD = {
    "missing stage 2": (lambda f: (f / "stage2_last.ckpt").unlink(), "lacks stage2_last.ckpt"),
    "approximate gelu": (
        lambda f: _edit_config(f, lambda c: c["stage2"]["hparams"].update(gelu_use_approx=True)),
        "gelu_use_approx=True cannot be converted: the tanh approximation",
    ),
    "unknown option": (
        lambda f: _edit_config(f, lambda c: c["stage2"]["hparams"].update(n_expert=4)),
        "stage2.hparams.n_expert is not an option of minDALL-E's config",
    ),
    "another tokenizer": (
        lambda f: _edit_config(
            f, lambda c: c["stage2"].update(vocab_size_txt=c["stage2"]["vocab_size_txt"] + 1)
        ),
        "the tokenizer does not belong to these weights",
    ),
    "weights of another size": (
        lambda f: _edit_config(f, lambda c: c["stage2"]["hparams"].update(n_layers=3, n_dense_layers=3)),
        "has no weight 'blocks.2.ln1.weight', which its config.yaml imply",
    ),
    "context length": (
        lambda f: _edit_config(f, lambda c: c["dataset"].update(context_length=TEXT_LEN + 1)),
        "must equal it",
    ),
    "not yaml": (lambda f: (f / "config.yaml").write_text("a: [1"), "config.yaml is not YAML"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_folders_are_named_in_one_line(tmp_path, capsys, converted, case):
    edit, words = BAD[case]
    folder = tmp_path / "1.3B"
    shutil.copytree(converted["root"] / "1.3B", folder)
    edit(folder)
    code = main([str(folder), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_the_archive_and_foreign_flags_are_named(tmp_path, capsys, converted):
    (tmp_path / "1.3B.tar.gz").write_bytes(b"\x1f\x8b")
    assert main([str(tmp_path / "1.3B.tar.gz"), "--output", str(tmp_path / "out")]) == 2
    assert "is an archive: extract it first" in capsys.readouterr().err
    folder = converted["root"] / "1.3B"
    assert (
        main([str(folder), "--output", str(tmp_path / "out"), "--bpe_path", str(folder / "config.yaml")]) == 2
    )
    assert "holds its own tokenizer" in capsys.readouterr().err


def test_from_pretrained_and_mindalles_sampling_call(converted):
    """``DALLE.from_pretrained(path)`` and minDALL-E's ``model.sampling(prompt=..., top_k=...,
    top_p=None, softmax_temperature=..., num_candidates=...)``: greedy candidates are the reference's."""
    from dalle_dist import DALLE

    model = DALLE.from_pretrained(converted["ckpt"])
    assert not model.training and model.tokenizer is not None and model.hparams.text_pad_id == 0
    bpe, w, vqgan = converted["bpe"], converted["stage2"], converted["vqgan"]
    images = model.sampling(
        prompt=CAPTIONS[1], top_k=1, top_p=None, softmax_temperature=1.0, num_candidates=3
    )
    assert images.shape == (3, 3, 16, 16)
    codes = torch.zeros(1, 0, dtype=torch.long)
    theirs = torch.tensor([their_ids(bpe, CAPTIONS[1])])
    with torch.no_grad():
        for _ in range(IMAGE_LEN):
            codes = torch.cat(
                [codes, reference_forward(w, theirs, codes)[1][:, -1].argmax(-1, keepdim=True)], 1
            )
        pixels = torch.clamp(vqgan.decode_indices(codes.view(1, 8, 8)) * 0.5 + 0.5, 0, 1)
    torch.testing.assert_close(images, pixels.expand(3, -1, -1, -1), rtol=0, atol=1e-5)
    torch.manual_seed(0)
    a = model.sampling(prompt="a red circle", top_k=4, top_p=0.9, softmax_temperature=0.7, num_candidates=4)
    torch.manual_seed(0)
    b = model.sampling(prompt="a red circle", top_k=4, top_p=0.9, softmax_temperature=0.7, num_candidates=4,
                       batch_size=4)  # fmt: skip
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16) and float(a.min()) >= 0 and float(a.max()) <= 1
    with pytest.raises(ValueError, match="must be at least 1, got 4 and 0"):
        model.sampling(prompt="a red circle", num_candidates=4, batch_size=0)
    with pytest.raises(TypeError, match="one caption"):
        model.sampling(prompt=["a", "b"])
    model.tokenizer = None
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        model.sampling(prompt="a red circle")


# ----------------------------------------------------------------------------------------- on the engines
@pytest.fixture(scope="module")
def one_converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mindalle-engines")
    make_folder(root / "1.3B")
    convert(root / "1.3B", root / "converted")
    return root / "converted"


def _fine_tune(ckpt: Path, out: Path, batch: int, *extra) -> list:
    return ["--dalle_path", ckpt, "--output", out, "--dataset_size", "32", "--batch_size", str(batch),
            "--truncate_captions", "--max_steps", "3", "--sample_every", "100", "--learning_rate", "1e-3",
            "--log_every", "1", *extra]  # fmt: skip


@pytest.mark.slow
def test_fine_tuning_under_torchrun_equals_one_process(tmp_path, one_converted):
    """The converted model fine-tuned by 2 ranks x batch 2 under torchrun (DDP) equals 1 x 4: within 1e-4,
    where 1e-5 suffices for models without a key bias. The key bias's gradient is rounding noise (below),
    which differs from run to run with the reduction order; Adam turns it into key-bias steps of ~1e-4, and
    those shift every score of a row alike, which softmax ignores up to rounding: seen as one weight in a
    thousand off by 2e-5 in some runs. A real difference (a wrong average, a lost batch) moves whole
    tensors by the learning rate, 1e-3."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_cmd([sys.executable, ROOT / "train_dalle.py", *_fine_tune(one_converted, single, 4)])
    proc = run_cmd(launch_2_ranks("torchrun", "train_dalle.py", *_fine_tune(one_converted, ddp, 2)))
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    a, b = load_file(single / "final" / "model.safetensors"), load_file(ddp / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("to_qkv.bias"):
            # the key bias adds q . b_k to every score of a row: softmax ignores it, its gradient is 0 up to
            # rounding, and Adam scales that noise (which differs with the reduction order) to steps of up
            # to the learning rate; the query and value biases compare as everything else does
            q, k, v = a[key].chunk(3)
            bq, bk, bv = b[key].chunk(3)
            torch.testing.assert_close(torch.cat([q, v]), torch.cat([bq, bv]), rtol=1e-5, atol=1e-4)
            assert float((k - bk).abs().max()) <= 2 * 3 * 1e-3  # two runs, three steps of at most lr
            continue
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-4, msg=key)


@pytest.mark.slow
def test_fine_tuning_under_deepspeed_zero3_bf16_then_generate(tmp_path, one_converted):
    """minDALL-E's users' wish: the converted model fine-tuned by the deepspeed launcher, ZeRO stage 3 in
    bf16 (2 ranks), then generate.py reads the run (no export step)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (make install-dev installs it)")
    out = tmp_path / "zero3"
    flags = _fine_tune(one_converted, out, 2, "--zero_stage", "3", "--bf16")
    proc = run_cmd(launch_2_ranks("deepspeed", "train_dalle.py", *flags))
    assert "weights identical on all 2 ranks: yes" in proc.stdout
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["engine"]["zero_stage"] == 3 and meta["engine"]["precision"] == "bf16"
    start, tuned = (
        load_file(one_converted / "model.safetensors"),
        load_file(out / "final" / "model.safetensors"),
    )
    assert not torch.equal(start["image_head.weight"], tuned["image_head.weight"])
    gen = tmp_path / "gen"
    run_cmd([sys.executable, ROOT / "generate.py", "--dalle_path", out, "--text", "a red circle",
             "--top_k", "4", "--num_images", "2", "--outputs_dir", gen])  # fmt: skip
    assert (gen / "a_red_circle" / "grid.png").is_file()


def test_seeded_sampling_draws_the_same_codes_as_the_reference(converted):
    """With a fixed seed, top-k 4 and temperature 0.8, the converted model draws the codes a sampler over
    minDALL-E's forward draws with the same seed and the same recipe (the k largest logits kept, divided by
    the temperature, one Gumbel-max draw from torch.rand over the image vocabulary a step)."""
    dalle, tokenizer, _ = load_dalle(converted["ckpt"])
    dalle.eval()
    bpe, w, vqgan = converted["bpe"], converted["stage2"], converted["vqgan"]
    text = tokenizer.tokenize(CAPTIONS[:2], TEXT_LEN, truncate_text=True)
    theirs = torch.tensor([their_ids(bpe, c) for c in CAPTIONS[:2]])
    torch.manual_seed(5)
    with torch.no_grad():
        images = dalle.generate_images(text, filter_thres=4, temperature=0.8)
    torch.manual_seed(5)
    codes = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(IMAGE_LEN):
            logits = reference_forward(w, theirs, codes)[1][:, -1]
            kth = logits.topk(4, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf")) / 0.8
            u = torch.rand(logits.shape, dtype=torch.float32)
            gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
            codes = torch.cat([codes, (logits + gumbel).argmax(-1, keepdim=True)], dim=1)
        pixels = torch.clamp(vqgan.decode_indices(codes.view(2, 8, 8)) * 0.5 + 0.5, 0, 1)
    assert len(codes.unique()) > 4  # drawn, not greedy
    torch.testing.assert_close(images, pixels, rtol=0, atol=1e-6)
