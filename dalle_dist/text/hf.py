"""Any Hugging Face ``tokenizers`` file (``tokenizer.json``: WordPiece, BPE, Unigram, ...) as a tokenizer.

DALLE-pytorch's ``--bpe_path tokenizer.json --hug``. The whole file travels in the checkpoint.

Padding: our id 0 must never stand for text. If the file's id 0 is a padding token (``[PAD]``,
``<pad>``, ``<|pad|>``: BERT vocabularies, for one) the ids are used as they are; otherwise every id
is shifted up by one and 0 becomes padding, which keeps every real token (a GPT-2 style vocabulary starts
with ``!`` at id 0). The shift is written into the saved JSON so that a checkpoint's ids never change
meaning.

What survives ``decode(encode(text))`` is up to the file: its normaliser (lower case, accents, ...), its
pre-tokeniser and its decoder. Text the vocabulary cannot represent becomes its unknown token (shown as
such, e.g. ``[UNK]``); other special tokens (``[CLS]``, ``</s>``, ...) are never produced by ``encode`` and
are skipped by ``decode``. ``normalize`` is exactly that round trip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from .base import PAD_ID, Tokenizer
from .registry import register


@register
class HuggingFaceTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer``; ids are the file's ids plus ``id_offset`` (0 or 1, see the module doc)."""

    family = "hf"

    def __init__(self, hf: HFTokenizer, id_offset: int | None = None):
        natural = _natural_offset(hf)
        # a file saved with padding or truncation on would pad and cut inside encode; tokenize does that
        hf.no_padding()
        hf.no_truncation()
        # a caption containing the text "[PAD]" must become ordinary tokens, never the padding id; the flag is
        # not part of the JSON, so it is set on every construction path
        hf.encode_special_tokens = True
        vocab = hf.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError("the Hugging Face tokenizer has an empty vocabulary")
        if id_offset is None:
            id_offset = natural
        elif id_offset not in (0, 1) or (id_offset == 0 and natural == 1):
            raise ValueError(f"'id_offset' must be 1, or 0 when id 0 is the padding token; got {id_offset!r}")
        self._hf, self._offset = hf, id_offset
        self._size = max(vocab.values()) + 1 + id_offset
        unk = getattr(hf.model, "unk_token", None)
        unk_id = hf.token_to_id(unk) if isinstance(unk, str) else None
        # specials other than the unknown token say nothing about the text: decode leaves them out
        self._skip = {i for i, tok in hf.get_added_tokens_decoder().items() if tok.special and i != unk_id}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> HuggingFaceTokenizer:
        """Read a ``tokenizer.json`` written by ``tokenizers`` (or ``transformers``' ``save_pretrained``)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            d = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a Hugging Face tokenizer.json: not valid JSON ({err})") from None
        if not isinstance(d, dict) or "model" not in d:
            raise ValueError(f"{path} is not a Hugging Face tokenizer.json: it has no 'model' key")
        return cls(_parse(text, str(path)))

    @property
    def vocab_size(self) -> int:
        return self._size

    def normalize(self, text: str) -> str:
        """What the file keeps of ``text``: its own normaliser, pre-tokeniser and decoder decide."""
        return self.decode(self.encode(text))

    def encode(self, text: str) -> list[int]:
        return [i + self._offset for i in self._hf.encode(text, add_special_tokens=False).ids]

    def _decode(self, ids: list[int]) -> str:
        ids = [i - self._offset for i in ids]
        # byte-level decoders give back the prefix space added before the first word
        return self._hf.decode([i for i in ids if i not in self._skip], skip_special_tokens=False).strip()

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "tokenizer_json": self._hf.to_str(), "id_offset": self._offset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HuggingFaceTokenizer:
        cls._check_family(d)
        text, offset = d.get("tokenizer_json"), d.get("id_offset")
        if not isinstance(text, str) or type(offset) is not int:
            raise ValueError(
                f"a {cls.family!r} tokenizer needs 'tokenizer_json' (the Hugging Face tokenizer JSON string) "
                "and 'id_offset' (0 or 1)"
            )
        return cls(_parse(text, "'tokenizer_json'"), id_offset=offset)

    # pickle (DataLoader workers, deepcopy) through the JSON so that __init__ runs again: the tokenizers
    # object's own pickling drops encode_special_tokens
    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(HFTokenizer.from_str(state["tokenizer_json"]), id_offset=state["id_offset"])


def _parse(text: str, where: str) -> HFTokenizer:
    try:
        return HFTokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception for malformed JSON
        raise ValueError(f"{where} is not a valid Hugging Face tokenizer: {err}") from None


def _natural_offset(hf: HFTokenizer) -> int:
    """0 when the file's id 0 is a padding token (``[PAD]``, ``<pad>``, ``<|pad|>``, ...), else 1."""
    first = hf.id_to_token(PAD_ID) or ""
    core = first.strip("[]<>|")
    return 0 if core.lower() == "pad" and core != first else 1  # bracketed: the word "pad" is text
