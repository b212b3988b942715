"""Tokenizers: the shared interface (both families), BPE training, saving/loading, and the registry."""

import itertools
import json
import pickle

import pytest
import torch

from dalle_dist.text import (
    BPETokenizer,
    ByteTokenizer,
    CaptionTooLongError,
    Tokenizer,
    available_families,
    load_tokenizer,
    register,
    tokenizer_from_dict,
)
from dalle_dist.text import registry as registry_module

CAPTIONS = [
    f"a {size} {colour} {shape} on a {background} background"
    for size, colour, shape, background in itertools.product(
        ["large", "small", "tiny"],
        ["red", "green", "blue", "yellow", "purple"],
        ["circle", "square", "triangle", "star"],
        ["gray", "white", "black"],
    )
]
# not in the training set: unseen words, punctuation, accents, CJK, emoji
UNSEEN = ["a huge orange hexagon, upside down!", "café crème 日本 🙂", "x", ""]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CAPTIONS, vocab_size=2048)


@pytest.fixture(params=["byte", "bpe"])
def tok(request, bpe) -> Tokenizer:
    return ByteTokenizer() if request.param == "byte" else bpe


# --- the interface, for every family ---


def test_encode_ids_are_in_range_and_never_padding(tok):
    for text in [*CAPTIONS[:10], *UNSEEN, "text that says <pad> and <PAD>"]:
        ids = tok.encode(text)
        assert all(0 < i < tok.vocab_size for i in ids), text


def test_tokenize_shape_and_zero_padding(tok):
    texts = [CAPTIONS[0], "x", ""]
    out = tok.tokenize(texts, context_length=48)
    assert out.shape == (3, 48) and out.dtype == torch.long
    for row, text in zip(out, texts, strict=True):
        ids = tok.encode(text)
        assert row[: len(ids)].tolist() == ids
        assert (row[len(ids) :] == 0).all()
    assert torch.equal(tok.tokenize(CAPTIONS[0], context_length=48), out[:1])  # a lone str is one row
    assert tok.tokenize([], context_length=5).shape == (0, 5)


def test_truncation_keeps_the_first_tokens(tok):
    text = "a large red circle on a gray background, " * 10
    ids = tok.encode(text)
    assert len(ids) > 7
    assert tok.tokenize(text, context_length=7, truncate_text=True)[0].tolist() == ids[:7]


def test_too_long_caption_error_names_caption_count_limit_and_fix(tok):
    text = "a very long caption about a large red circle on a gray background " * 3
    n = len(tok.encode(text))
    with pytest.raises(CaptionTooLongError) as info:
        tok.tokenize(["short", text], context_length=5)
    err = info.value
    assert isinstance(err, ValueError)
    message = str(err)
    assert text[:40] in message and text[:41] not in message
    assert f"{n} tokens" in message and "5" in message
    assert "--truncate_captions" in message and "--text_seq_len" in message
    assert (err.caption, err.num_tokens, err.context_length) == (text, n, 5)
    # survives pickling, as DataLoader workers need
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == message and again.num_tokens == n


def test_tokenize_rejects_bad_arguments(tok):
    with pytest.raises(ValueError, match="context_length"):
        tok.tokenize("a", context_length=0)
    with pytest.raises(TypeError, match="position 1"):
        tok.tokenize(["a", 3])


def test_decode_skips_padding_and_round_trips(tok):
    for text in [*CAPTIONS[:5], *UNSEEN]:
        row = tok.tokenize(text, context_length=64)[0]
        assert (row == 0).any()  # there is padding to skip
        assert tok.decode(row) == tok.normalize(text)  # 1-D tensor
        ids = tok.encode(text)
        assert tok.decode([0, *ids, 0, 0]) == tok.normalize(text)  # list, padding anywhere
        assert tok.decode([*ids, tok.vocab_size, 10**6]) == tok.normalize(text)  # out of range dropped
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    assert loaded.to_dict() == tok.to_dict()
    texts = [*CAPTIONS, *UNSEEN]
    assert torch.equal(loaded.tokenize(texts, 64), tok.tokenize(texts, 64))
    assert json.loads(path.read_text())["family"] == tok.family
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    tok.save(path)  # overwriting works
    assert load_tokenizer(str(path)).to_dict() == tok.to_dict()


def test_from_dict_and_pickle_round_trip(tok):
    assert torch.equal(tokenizer_from_dict(tok.to_dict()).tokenize(CAPTIONS, 64), tok.tokenize(CAPTIONS, 64))
    text = "a <pad> sign"
    assert pickle.loads(pickle.dumps(tok)).encode(text) == tok.encode(text)


# --- ByteTokenizer keeps its behaviour ---


def test_byte_tokenizer_ids_are_shifted_bytes():
    tok = ByteTokenizer()
    assert tok.family == "byte" and tok.vocab_size == 257
    assert tok.encode("ab é") == [98, 99, 33, 0xC3 + 1, 0xA9 + 1]
    assert tok.decode([98, 99]) == "ab"
    assert tok.normalize("A  B") == "A  B"  # no normalisation


# --- BPE ---


def test_bpe_normalises_case_whitespace_and_compatibility_forms(bpe):
    assert bpe.normalize("  A  Large\tRED\u00a0Circle\n") == "a large red circle"
    assert bpe.normalize("ﬁne ＡＢＣ") == "fine abc"  # NFKC: ligature, full-width letters
    assert bpe.encode("A  Large RED circle") == bpe.encode("a large red circle")
    assert bpe.decode(bpe.encode("  A Red\u00a0Star ")) == "a red star"


def test_bpe_pad_token_is_id_zero_and_text_pad_is_ordinary(bpe):
    assert bpe.to_dict()["family"] == "bpe"
    assert bpe._hf.token_to_id("<pad>") == 0
    assert 0 not in bpe.encode("<pad><PAD>")
    assert bpe.decode(bpe.encode("a <pad> b")) == "a <pad> b"


def test_bpe_compresses_captions_far_better_than_bytes(bpe):
    text = "a large red circle on a gray background"
    n_bpe, n_byte = len(bpe.encode(text)), len(ByteTokenizer().encode(text))
    assert n_byte == len(text)
    assert n_bpe * 4 <= n_byte, (n_bpe, n_byte)
    # the words it was trained on are single tokens, wherever they stand in a caption
    assert len(bpe.encode("red")) == 1 and len(bpe.encode("a gray triangle")) == 3


def test_bpe_training_is_deterministic():
    first = BPETokenizer.train(CAPTIONS, vocab_size=300)
    assert BPETokenizer.train(list(CAPTIONS), vocab_size=300).to_dict() == first.to_dict()
    assert BPETokenizer.train(CAPTIONS, vocab_size=290).to_dict() != first.to_dict()


def test_bpe_vocab_size_is_the_real_size(bpe):
    # enough merges available: exactly the size asked for
    assert BPETokenizer.train(iter(CAPTIONS), vocab_size=300).vocab_size == 300
    # a small caption set runs out of frequent pairs: fewer ids than asked, never more
    assert 257 < bpe.vocab_size < 2048
    assert max(max(bpe.encode(c)) for c in [*CAPTIONS, *UNSEEN] if c) < bpe.vocab_size
    # the minimum is the byte alphabet plus padding: every text still encodes and round-trips
    tiny = BPETokenizer.train(CAPTIONS, vocab_size=257)
    assert tiny.vocab_size == 257
    assert len(tiny.encode(CAPTIONS[0])) == len(CAPTIONS[0]) + 1  # one per byte, plus the prefix space
    assert tiny.decode(tiny.encode("café 日本")) == "café 日本"


def test_bpe_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train(CAPTIONS, vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        BPETokenizer.train(CAPTIONS, min_frequency=0)
    with pytest.raises(ValueError, match="no captions"):
        BPETokenizer.train(iter([]))


def test_bpe_from_dict_refuses_malformed_input(bpe):
    with pytest.raises(ValueError, match="tokenizer_json"):
        BPETokenizer.from_dict({"family": "bpe"})
    with pytest.raises(ValueError, match="not a valid Hugging Face tokenizer"):
        BPETokenizer.from_dict({"family": "bpe", "tokenizer_json": "{not json"})
    with pytest.raises(ValueError, match="family 'bpe'"):
        BPETokenizer.from_dict(ByteTokenizer().to_dict())
    # a valid HF tokenizer whose id 0 is not <pad> would break the padding contract
    hf = json.loads(bpe.to_dict()["tokenizer_json"])
    hf["added_tokens"] = []
    hf["model"]["vocab"] = {k: v + 1 for k, v in hf["model"]["vocab"].items() if k != "<pad>"}
    with pytest.raises(ValueError, match="<pad>"):
        BPETokenizer.from_dict({"family": "bpe", "tokenizer_json": json.dumps(hf)})


# --- the registry ---


def test_available_families():
    assert {"bpe", "byte"} <= set(available_families())
    assert available_families() == sorted(available_families())


def test_unknown_family_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tokenizer family 'sentencepiece'.*bpe, byte"):
        tokenizer_from_dict({"family": "sentencepiece"})
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({"family": "sentencepiece"}))
    with pytest.raises(ValueError, match=r"tok\.json.*'sentencepiece'.*bpe, byte"):
        load_tokenizer(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"family: bpe\n", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (json.dumps({"vocab": {}}).encode(), "no 'family' key"),
        (json.dumps(["bpe"]).encode(), "a dict with a 'family' key"),
        (json.dumps({"family": ["bpe"]}).encode(), "unknown tokenizer family"),
    ],
)
def test_files_that_are_not_tokenizers_are_refused(tmp_path, content, reason):
    path = tmp_path / "weird.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value) and "Tokenizer.save" in str(info.value)


class _Payload:
    """Unpickling this creates ``marker``: the test shows loading never gets that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_hostile_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    for name in ("tokenizer.json", "tokenizer.pkl"):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match="not valid JSON"):
            load_tokenizer(path)
    assert not marker.exists()
    pickle.loads(payload).close()  # the payload is live: unpickling it does run code
    assert marker.exists()


def test_register_a_new_family(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_module, "_FAMILIES", dict(registry_module._FAMILIES))

    @register
    class Letters(Tokenizer):
        """a..z are 1..26, everything else is dropped."""

        family = "letters"
        vocab_size = 27

        def encode(self, text):
            return [ord(c) - 96 for c in text.lower() if "a" <= c <= "z"]

        def _decode(self, ids):
            return "".join(chr(i + 96) for i in ids)

        def to_dict(self):
            return {"family": self.family}

        @classmethod
        def from_dict(cls, d):
            cls._check_family(d)
            return cls()

    assert "letters" in available_families()
    Letters().save(tmp_path / "letters.json")
    loaded = load_tokenizer(tmp_path / "letters.json")
    assert isinstance(loaded, Letters)
    assert loaded.tokenize("Abc!", context_length=4).tolist() == [[1, 2, 3, 0]]

    class Impostor(Letters):
        family = "bpe"

    with pytest.raises(ValueError, match="already registered by BPETokenizer"):
        register(Impostor)

    class Unnamed(Letters):
        pass

    with pytest.raises(TypeError, match="family"):
        register(Unnamed)
    with pytest.raises(TypeError, match="Tokenizer subclass"):
        register(dict)
