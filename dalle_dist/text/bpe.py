"""The default tokenizer: a byte-level BPE trained on the captions, built on Hugging Face ``tokenizers``.

Text is normalised before it is split: NFKC, lower case, runs of whitespace collapsed to one space, and
the ends stripped, so "A  Red" and "a red" give the same ids and ``decode(encode(x)) == normalize(x)``.
Every word carries its leading space (GPT-2's ``Ġ``), so "red" is one token wherever it stands. Being
byte-level, any text encodes: there is no unknown token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from .base import PAD_ID, Tokenizer
from .registry import register

PAD_TOKEN = "<pad>"
MIN_VOCAB_SIZE = 256 + 1  # the byte alphabet plus padding


@register
class BPETokenizer(Tokenizer):
    """Byte-level BPE: ``<pad>`` is id 0, then the 256 byte symbols, then the learned merges."""

    family = "bpe"

    def __init__(self, hf: HFTokenizer):
        if hf.token_to_id(PAD_TOKEN) != PAD_ID:
            raise ValueError(f"a BPE tokenizer needs {PAD_TOKEN!r} at id {PAD_ID}")
        # a caption containing the text "<pad>" must become ordinary tokens, never the padding id; the
        # flag is not part of the HF JSON, so it is set on every construction path (pickling included)
        hf.encode_special_tokens = True
        self._hf = hf

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> BPETokenizer:
        """Learn merges from ``captions``.

        ``vocab_size`` is an upper bound: training stops early when no pair occurs ``min_frequency``
        times, so a small caption set yields fewer ids; read the real size from ``.vocab_size``. The
        same captions in the same order with the same arguments give an identical tokenizer.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + padding), got {vocab_size}"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
        hf = HFTokenizer(models.BPE())
        hf.normalizer = normalizers.Sequence(
            [
                normalizers.NFKC(),  # compatibility forms: full-width letters, ligatures, no-break spaces
                normalizers.Lowercase(),
                normalizers.Replace(Regex(r"\s+"), " "),
                normalizers.Strip(),
            ]
        )
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[PAD_TOKEN],  # listed first, so it takes id 0
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        seen = [0]
        hf.train_from_iterator(_counted(captions, seen), trainer=trainer)
        if seen[0] == 0:
            raise ValueError("cannot train a BPE tokenizer on no captions")
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def normalize(self, text: str) -> str:
        normalizer = self._hf.normalizer  # None for a tokenizer JSON built without one
        return normalizer.normalize_str(text) if normalizer is not None else text

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        # the byte-level decoder gives back the prefix space of the first word; normalised text has none
        return self._hf.decode(ids, skip_special_tokens=True).strip()

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "tokenizer_json": self._hf.to_str()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        cls._check_family(d)
        text = d.get("tokenizer_json")
        if not isinstance(text, str):
            raise ValueError(
                "a 'bpe' tokenizer needs 'tokenizer_json': the Hugging Face tokenizer JSON string"
            )
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as err:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"'tokenizer_json' is not a valid Hugging Face tokenizer: {err}") from None
        return cls(hf)

    # pickle (DataLoader workers, deepcopy) through the JSON so that __init__ runs again: HF's own
    # pickling drops encode_special_tokens
    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(HFTokenizer.from_str(state["tokenizer_json"]))


def _counted(captions: Iterable[str], seen: list[int]) -> Iterator[str]:
    """Pass ``captions`` through, counting them in ``seen[0]``."""
    for caption in captions:
        seen[0] += 1
        yield caption
