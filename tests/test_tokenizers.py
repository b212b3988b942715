"""The tokenizer families beyond the default BPE: YouTokenToMe, Hugging Face files, Chinese BERT.

For each: what survives a round trip, the padding contract, saving into a checkpoint, the ``--bpe_path`` /
``--hug`` / ``--chinese`` flags, the ``train_bpe`` command, and a tiny DALL-E trained with it then sampled by
``generate.py`` with no tokenizer flag. Families whose package is missing are skipped (``make install-dev``
installs them all).
"""

from __future__ import annotations

import itertools
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_DALLE, TINY_VAE

from dalle_dist import generation
from dalle_dist.data.synthetic import BACKGROUNDS, COLORS, SHAPES, SIZES
from dalle_dist.text import (
    BPETokenizer,
    CaptionTooLongError,
    ChineseTokenizer,
    HuggingFaceTokenizer,
    YttmTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)
from dalle_dist.text import train_bpe as train_bpe_cli
from dalle_dist.text.options import check_matches, read_tokenizer_file, tokenizer_from_options
from dalle_dist.training import dalle_job

# the built-in dataset's captions, plus text in the other scripts the families are tested on
CAPTIONS = [
    f"a {size} {color} {shape} on a {background} background"
    for size, color, shape, background in itertools.product(SIZES, COLORS, SHAPES, BACKGROUNDS)
]
EXTRA = ["café crème brûlée", "追老鼠的猫", "猫，狗！", "Hello, World!"]
LONG = "a large red circle on a gray background and a small blue square on a white background " * 2


def need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed (make install-dev installs it)")


# --- the tokenizers, one module-wide instance each ---


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture(scope="module")
def yttm_model(files) -> Path:
    need("youtokentome")
    path = files / "captions.model"
    YttmTokenizer.train([*CAPTIONS, *EXTRA], vocab_size=200).save_model(path)
    return path


@pytest.fixture(scope="module")
def wordpiece_json(files) -> Path:
    """A BERT-like tokenizer.json: [PAD] at id 0, lower case, accents stripped, padding switched on."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    hf = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    hf.train_from_iterator(
        [*CAPTIONS, *EXTRA],
        trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False),
    )
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    hf.enable_padding(pad_id=0, pad_token="[PAD]", length=64)  # a file may say so; encode must not pad
    hf.enable_truncation(4)
    path = files / "wordpiece.json"
    hf.save(str(path))
    return path


@pytest.fixture(scope="module")
def bytelevel_json(files) -> Path:
    """A GPT-2 style tokenizer.json: byte-level BPE with no padding token, so its id 0 is the byte '!'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    hf.train_from_iterator(
        CAPTIONS, trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, show_progress=False)
    )
    path = files / "bytelevel.json"
    hf.save(str(path))
    return path


@pytest.fixture(scope="module")
def chinese_vocab(files) -> Path:
    """BERT's vocab.txt layout: specials, CJK characters, punctuation, and the dataset's words."""
    need("transformers")
    words = sorted({w for c in CAPTIONS for w in c.split()} | {"the", "cat", "dog", "##s", "cafe"})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"追老鼠的猫狗，。！", ",", ".", "!", *words]
    folder = files / "bert-chinese"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def yttm(yttm_model) -> YttmTokenizer:
    return YttmTokenizer.from_file(yttm_model)


@pytest.fixture(scope="module")
def wordpiece(wordpiece_json) -> HuggingFaceTokenizer:
    return HuggingFaceTokenizer.from_file(wordpiece_json)


@pytest.fixture(scope="module")
def bytelevel(bytelevel_json) -> HuggingFaceTokenizer:
    return HuggingFaceTokenizer.from_file(bytelevel_json)


@pytest.fixture(scope="module")
def chinese(chinese_vocab) -> ChineseTokenizer:
    return ChineseTokenizer.from_vocab(chinese_vocab)


@pytest.fixture(params=["yttm", "wordpiece", "bytelevel", "chinese"])
def tok(request):
    return request.getfixturevalue(request.param)


# --- what each family keeps ---


def round_trip(tok, text: str) -> str:
    return tok.decode(tok.encode(text))


def test_yttm_keeps_case_and_accents_collapses_whitespace_and_marks_unknown_characters(yttm):
    assert round_trip(yttm, "a large red circle") == "a large red circle"
    assert round_trip(yttm, "  Hello   World\tred ") == "Hello World red"  # whitespace only; case kept
    assert round_trip(yttm, "A red") == "<UNK> red"  # no capital A in its training text
    assert round_trip(yttm, "café crème") == "café crème"
    assert round_trip(yttm, "追老鼠的猫") == "追老鼠的猫"  # its characters were in the training text
    assert round_trip(yttm, "a 🙂 cat") == "a <UNK> cat"  # the emoji was not
    assert len(yttm.encode("a large red circle")) <= 4  # trained words are whole tokens


def test_wordpiece_file_lowercases_strips_accents_and_splits_cjk(wordpiece):
    assert round_trip(wordpiece, "A Large RED circle") == "a large red circle"
    assert round_trip(wordpiece, "Café crème") == "cafe creme"
    assert round_trip(wordpiece, "追老鼠的猫") == "追 老 鼠 的 猫"  # the file's decoder spaces CJK tokens
    assert round_trip(wordpiece, "hello, world! 🙂") == "hello, world! [UNK]"


def test_bytelevel_file_round_trips_everything_exactly(bytelevel):
    for text in ["A Large RED circle", "café  crème", "追老鼠的猫", "🙂 [PAD] <pad>"]:
        assert round_trip(bytelevel, text) == text


def test_chinese_round_trips_chinese_and_writes_it_without_spaces(chinese):
    assert round_trip(chinese, "追老鼠的猫") == "追老鼠的猫"
    assert chinese.encode("追老鼠的猫") == [5, 6, 7, 8, 9]  # one token a character, vocab.txt's line numbers
    assert round_trip(chinese, "追老鼠的猫，狗！") == "追老鼠的猫，狗！"
    assert round_trip(chinese, "The Cats, a dog.") == "the cats, a dog."  # BERT: lower case, punctuation
    assert round_trip(chinese, "猫 and 狗 cafe") == "猫[UNK]狗cafe"  # no spaces beside CJK; unknown word
    assert round_trip(chinese, "Café 🙂") == "cafe [UNK]"  # accents stripped; emoji not in the vocab


def test_normalize_is_the_round_trip(tok):
    for text in [CAPTIONS[0], *EXTRA, "🙂", ""]:
        assert tok.normalize(text) == round_trip(tok, text)


# --- the contract every family keeps ---


def test_ids_are_in_range_and_never_padding(tok):
    for text in [*CAPTIONS[:5], *EXTRA, "[PAD] <pad> <PAD> [CLS] [SEP]", "🙂"]:
        ids = tok.encode(text)
        assert ids and all(0 < i < tok.vocab_size for i in ids), (text, ids)


def test_tokenize_pads_with_zero_and_truncates(tok):
    out = tok.tokenize([CAPTIONS[0], "猫", ""], context_length=24)
    assert out.shape == (3, 24)
    for row, text in zip(out, [CAPTIONS[0], "猫", ""], strict=True):
        ids = tok.encode(text)
        assert row[: len(ids)].tolist() == ids and (row[len(ids) :] == 0).all()
        assert tok.decode(row) == tok.normalize(text)
    ids = tok.encode(LONG)
    assert tok.tokenize(LONG, context_length=5, truncate_text=True)[0].tolist() == ids[:5]


def test_too_long_caption_names_the_caption(tok):
    with pytest.raises(CaptionTooLongError) as info:
        tok.tokenize(["short", LONG], context_length=5)
    assert LONG[:40] in str(info.value) and "--truncate_captions" in str(info.value)
    assert info.value.num_tokens == len(tok.encode(LONG))


def test_save_load_and_pickle_give_identical_ids(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.to_dict() == tok.to_dict()
    texts = [*CAPTIONS[:20], *EXTRA, "🙂"]
    assert torch.equal(
        loaded.tokenize(texts, 32, truncate_text=True), tok.tokenize(texts, 32, truncate_text=True)
    )
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode("[PAD] 追老鼠的猫") == tok.encode("[PAD] 追老鼠的猫")
    # data only: the JSON holds strings and numbers, no pickles
    assert all(isinstance(v, (str, int)) for v in json.loads(path.read_text()).values())


# --- padding: use the file's [PAD] at id 0, or shift ---


def test_hf_ids_keep_a_pad_at_zero_and_shift_otherwise(wordpiece, bytelevel, wordpiece_json, bytelevel_json):
    from tokenizers import Tokenizer

    raw_wp, raw_bl = Tokenizer.from_file(str(wordpiece_json)), Tokenizer.from_file(str(bytelevel_json))
    raw_wp.no_padding()
    raw_wp.no_truncation()
    text = "a large red circle"
    assert raw_wp.id_to_token(0) == "[PAD]" and wordpiece.to_dict()["id_offset"] == 0
    assert wordpiece.encode(text) == raw_wp.encode(text, add_special_tokens=False).ids
    assert wordpiece.vocab_size == raw_wp.get_vocab_size()
    assert raw_bl.id_to_token(0) == "!" and bytelevel.to_dict()["id_offset"] == 1
    assert bytelevel.encode(text) == [i + 1 for i in raw_bl.encode(text).ids]
    assert bytelevel.vocab_size == raw_bl.get_vocab_size() + 1
    assert bytelevel.decode(bytelevel.encode("!!")) == "!!"  # the byte at the file's id 0 survives
    # the file's own padding (64) and truncation (4) are off: tokenize decides
    assert len(wordpiece.encode(LONG)) > 4


def test_yttm_model_with_another_pad_id_is_shifted(files):
    need("youtokentome")
    import youtokentome

    data, model = files / "pad3.txt", files / "pad3.model"
    data.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    youtokentome.BPE.train(
        data=str(data), model=str(model), vocab_size=60, unk_id=0, bos_id=1, eos_id=2, pad_id=3
    )
    raw = youtokentome.BPE(model=str(model))
    tok = YttmTokenizer.from_file(model)
    assert raw.id_to_subword(0) == "<UNK>" and tok.vocab_size == raw.vocab_size() + 1
    assert tok.encode("a red 🙂") == [i + 1 for i in raw.encode(["a red 🙂"])[0]]
    assert round_trip(tok, "a red 🙂") == "a red <UNK>"
    assert tok.decode([3 + 1, *tok.encode("a red")]) == "a red"  # its own <PAD>, shifted, is skipped


def test_yttm_refuses_malformed_models_without_crashing(yttm_model, tmp_path):
    good = yttm_model.read_bytes()
    lines = good.decode().splitlines()
    bad_cases = {
        "text": b"not a model at all",
        "empty": b"",
        "truncated": "\n".join(lines[:-1]).encode(),
        "bad id": "\n".join([*lines[:-1], "1 0 2 999"]).encode(),
        "binary": b"\x00\xff" * 10,
    }
    for name, content in bad_cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.model"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a YouTokenToMe model"):
            YttmTokenizer.from_file(path)
    with pytest.raises(ValueError, match="model_base64"):
        tokenizer_from_dict({"family": "yttm"})
    with pytest.raises(ValueError, match="not base64"):
        tokenizer_from_dict({"family": "yttm", "model_base64": "%%%"})


def test_chinese_vocab_sources(chinese, chinese_vocab, tmp_path, monkeypatch):
    # the vocab.txt itself, and a transformers save_pretrained folder, give the same tokenizer
    assert ChineseTokenizer.from_vocab(chinese_vocab / "vocab.txt").to_dict() == chinese.to_dict()
    from transformers import BertTokenizer

    saved = tmp_path / "saved"
    BertTokenizer.from_pretrained(str(chinese_vocab)).save_pretrained(str(saved))
    assert ChineseTokenizer.from_vocab(saved).encode("追老鼠的猫") == chinese.encode("追老鼠的猫")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"needs a vocab\.txt"):
        ChineseTokenizer.from_vocab(tmp_path / "empty")
    # a model name with no hub in reach fails at once (not after minutes of retries) and names the fix
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"--chinese_vocab bert-base-chinese: .*hub.*--chinese_vocab DIR"):
        tokenizer_from_options(chinese=True)


# --- the --bpe_path / --hug / --chinese flags ---


def test_bpe_path_tells_the_kinds_apart(files, yttm_model, wordpiece_json, yttm, wordpiece):
    ours = files / "ours.json"
    bpe = BPETokenizer.train(CAPTIONS, vocab_size=300)
    bpe.save(ours)
    assert read_tokenizer_file(ours).to_dict() == bpe.to_dict()
    assert read_tokenizer_file(yttm_model).to_dict() == yttm.to_dict()
    assert read_tokenizer_file(wordpiece_json).to_dict() == wordpiece.to_dict()
    assert read_tokenizer_file(wordpiece_json, hug=True).to_dict() == wordpiece.to_dict()
    # a checkpoint's tokenizer.json is ours too, whatever its family
    yttm.save(files / "yttm-saved.json")
    assert read_tokenizer_file(files / "yttm-saved.json").to_dict() == yttm.to_dict()


@pytest.mark.parametrize(
    ("content", "hug", "needles"),
    [
        (None, False, ["does not exist"]),
        (b"garbage", False, ["is not JSON", "YouTokenToMe .model"]),
        (b'{"vocab": {}}', False, ["neither a 'family' nor a 'model' key"]),
        (b'{"family": "bpe"}', True, ["--hug", "drop --hug"]),
        (b"garbage", True, ["--hug", "not a Hugging Face tokenizer.json"]),
        (b'{"model": {"type": "nonsense"}}', False, ["not a valid Hugging Face tokenizer"]),
    ],
)
def test_bad_bpe_path_is_one_line_naming_flag_and_fix(tmp_path, content, hug, needles):
    path = tmp_path / "tok.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        tokenizer_from_options(path, hug=hug)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_flag_combinations(tmp_path):
    assert tokenizer_from_options() is None  # no flag: the run trains its BPE
    with pytest.raises(ValueError, match="give one of them"):
        tokenizer_from_options(tmp_path / "x.json", chinese=True)
    with pytest.raises(ValueError, match=r"--hug.*add --bpe_path"):
        tokenizer_from_options(hug=True)
    with pytest.raises(ValueError, match=r"--chinese_vocab .*nothing-here"):
        tokenizer_from_options(chinese_vocab=str(tmp_path / "nothing-here"))


def test_generate_flags_must_match_the_checkpoint(
    yttm, yttm_model, wordpiece, wordpiece_json, chinese, chinese_vocab
):
    check_matches(yttm)  # no flags: nothing to check
    check_matches(yttm, bpe_path=yttm_model)
    check_matches(wordpiece, bpe_path=wordpiece_json, hug=True)
    check_matches(chinese, chinese=True)
    check_matches(chinese, chinese_vocab=str(chinese_vocab))
    with pytest.raises(ValueError, match=r"not the tokenizer the model was trained with.*'yttm'.*drop"):
        check_matches(yttm, bpe_path=wordpiece_json)
    with pytest.raises(ValueError, match=r"--hug does not match.*'yttm'"):
        check_matches(yttm, hug=True)
    with pytest.raises(ValueError, match=r"--chinese does not match.*'hf'"):
        check_matches(wordpiece, chinese=True)


def test_install_script_leaves_an_installed_yttm_alone():
    """make install-dev runs it on every install: with youtokentome present it must return at once."""
    need("youtokentome")
    script = ROOT / "scripts" / "install_yttm.sh"
    proc = subprocess.run(["bash", str(script), sys.executable], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "youtokentome already installed", proc


# --- python -m dalle_dist.text.train_bpe ---


def test_train_bpe_command(files, capsys):
    need("youtokentome")
    captions = files / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n\n", encoding="utf-8")
    out = files / "cli.json"
    assert train_bpe_cli.main([str(captions), "--vocab_size", "300", "--out", str(out)]) == 0
    assert load_tokenizer(out).to_dict() == BPETokenizer.train(CAPTIONS, vocab_size=300).to_dict()
    model = files / "cli.model"
    assert train_bpe_cli.main([str(captions), "--vocab_size", "100", "--yttm", "--out", str(model)]) == 0
    assert read_tokenizer_file(model).family == "yttm" and "yttm tokenizer" in capsys.readouterr().out
    assert train_bpe_cli.main([str(captions), "--vocab_size", "100", "--yttm", "--out", str(out)]) == 0
    # youtokentome breaks ties between equally frequent pairs arbitrarily: two trainings may differ
    assert load_tokenizer(out).family == "yttm" and load_tokenizer(out).vocab_size == 100
    empty = files / "blank.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    for argv, needle in [
        ([str(files / "missing.txt")], "missing.txt does not exist"),
        ([str(empty)], "no captions"),
        ([str(captions), "--vocab_size", "100"], "at least 257"),
        ([str(captions), "--vocab_size", "5", "--yttm"], "vocab_size"),
        ([str(captions), "--out", str(files / "no" / "dir.json")], "does not exist"),
    ]:
        if "--out" not in argv:
            argv = [*argv, "--out", str(files / "never.json")]
        assert train_bpe_cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err, err
    assert not (files / "never.json").exists()


# --- end to end: train_dalle.py with each family, then generate.py with no tokenizer flag ---


def run(script: str, *args, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [
            sys.executable,
            *([str(ROOT / script)] if script.endswith(".py") else ["-m", script]),
            *map(str, args),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == expect, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    run("train_vae.py", "--output", out, "--max_steps", "2", *TINY_VAE.split())
    return out


@pytest.mark.parametrize("family", ["bpe", "yttm", "hf", "chinese"])
def test_train_and_generate_with_each_family(family, request, vae_run, files, tmp_path):
    if family == "bpe":  # a file from the train_bpe command, through python -m as users run it
        captions = tmp_path / "captions.txt"
        captions.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
        run("dalle_dist.text.train_bpe", captions, "--vocab_size", "300", "--out", tmp_path / "tok.json")
        flags = ["--bpe_path", tmp_path / "tok.json"]
    elif family == "yttm":
        flags = ["--bpe_path", request.getfixturevalue("yttm_model")]
    elif family == "hf":
        flags = ["--bpe_path", request.getfixturevalue("wordpiece_json"), "--hug"]
    else:
        flags = ["--chinese", "--chinese_vocab", request.getfixturevalue("chinese_vocab")]
    out = tmp_path / "dalle"
    run(
        "train_dalle.py",
        "--vae_path",
        vae_run,
        "--output",
        out,
        "--max_steps",
        "2",
        *TINY_DALLE.split(),
        *flags,
    )
    tokenizer = load_tokenizer(out / "final" / "tokenizer.json")
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert tokenizer.family == family and meta["model"]["num_text_tokens"] == tokenizer.vocab_size

    prompt = "追老鼠的猫" if family == "chinese" else "a small red circle"
    run(
        "generate.py",
        "--dalle_path",
        out,
        "--text",
        prompt,
        "--num_images",
        "1",
        "--outputs_dir",
        tmp_path / "gen",
    )
    assert (tmp_path / "gen" / prompt.replace(" ", "_") / "0.png").is_file()
    # the same flags are accepted by generate.py (checked against the checkpoint); other ones are refused
    argv = [
        "--dalle_path",
        str(out),
        "--text",
        prompt,
        "--num_images",
        "1",
        "--outputs_dir",
        str(tmp_path / "g2"),
    ]
    assert generation.main([*argv, *map(str, flags)]) == 0
    other = ["--chinese"] if family != "chinese" else ["--hug"]
    assert generation.main([*argv, *other]) == 2


def test_train_dalle_tokenizer_flag_errors(vae_run, tmp_path, capsys):
    base = ["--vae_path", str(vae_run), "--output", str(tmp_path / "o"), *TINY_DALLE.split()]
    assert dalle_job.main([*base, "--hug"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --hug reads --bpe_path as a Hugging Face tokenizer.json: add --bpe_path FILE"
    )
    assert dalle_job.main([*base, "--bpe_path", str(tmp_path / "missing.model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --bpe_path") and "does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before the run directory is made
