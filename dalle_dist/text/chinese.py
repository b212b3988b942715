"""A BERT-style Chinese tokenizer (DALLE-pytorch's ``--chinese``), built by ``transformers``' BertTokenizer.

The vocabulary comes from a local directory (``vocab.txt`` or a ``save_pretrained`` folder), a
``vocab.txt`` file, or a model name such as ``bert-base-chinese`` fetched from the Hugging Face hub.
``transformers`` is needed only to build it: the checkpoint carries the complete ``tokenizers`` pipeline
that BertTokenizer assembled (vocabulary included), so loading one needs neither the vocabulary files nor
``transformers``.

Normalisation is BERT's: control characters dropped, whitespace collapsed, and with ``do_lower_case`` (on
for a bare ``vocab.txt``; a ``save_pretrained`` folder says) lower case with accents stripped. Every CJK
character is its own token, other words are split into WordPiece pieces and punctuation is split off.
``decode`` writes Chinese the way it is written, with no spaces beside CJK characters or full-width
punctuation, and Latin words separated by one space. Characters missing from the vocabulary (emoji,
usually) come back as ``[UNK]``. Id 0 is BERT's ``[PAD]``; a vocabulary that puts something else there is
shifted by one (see ``hf.py``).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from .hf import HuggingFaceTokenizer
from .registry import register

DEFAULT_MODEL = "bert-base-chinese"  # DALLE-pytorch's choice

# BERT's CJK ideograph blocks, CJK symbols and punctuation, and full-width forms (，。！)
_WIDE = (
    "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
    "\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f"
)
_SPACE_BESIDE_WIDE = re.compile(f"(?<=[{_WIDE}]) | (?=[{_WIDE}])")


@register
class ChineseTokenizer(HuggingFaceTokenizer):
    """BERT WordPiece over a Chinese vocabulary; build one with ``ChineseTokenizer.from_vocab``."""

    family = "chinese"

    @classmethod
    def from_vocab(cls, source: str | os.PathLike[str] = DEFAULT_MODEL) -> ChineseTokenizer:
        """Build from a vocabulary directory, a ``vocab.txt`` file, or a hub model name.

        Raises ``ValueError`` naming ``source`` when it holds no vocabulary or cannot be reached, and
        ``ImportError`` when ``transformers`` is not installed.
        """
        path = Path(source)
        saved = ("tokenizer.json", "tokenizer_config.json")  # what save_pretrained writes beside the vocab
        if path.is_dir() and not any((path / f).is_file() for f in saved):
            path = path / "vocab.txt"  # a bare vocabulary folder
            if not path.is_file():
                raise ValueError(f"{source} holds no BERT vocabulary: it needs a vocab.txt")
        looks_local = path.is_absolute() or path.suffix == ".txt" or str(source).startswith(".")
        if not path.exists() and looks_local:  # anything else may be a hub name
            raise ValueError(f"{path} does not exist")
        try:
            from transformers import BertTokenizer
        except ImportError:
            raise ImportError(
                "the Chinese tokenizer needs transformers: pip install 'dalle_dist[chinese]'"
            ) from None
        if path.is_file():
            # BERT's own default, stated because transformers' has changed between releases
            bert = BertTokenizer(vocab=_read_vocab(path), do_lower_case=True)
        elif path.is_dir():
            bert = BertTokenizer.from_pretrained(str(path))  # with the settings saved beside the vocabulary
        else:
            bert = _from_hub(BertTokenizer, str(source))
        # transformers quietly builds a tokenizer of its five special tokens when it finds no vocabulary
        if bert.vocab_size <= len(bert.all_special_tokens):
            raise ValueError(f"{source} gave no BERT vocabulary beyond the special tokens")
        return cls(bert.backend_tokenizer)

    def _decode(self, ids: list[int]) -> str:
        return _SPACE_BESIDE_WIDE.sub("", super()._decode(ids))


def _read_vocab(path: Path) -> dict[str, int]:
    """BERT's ``vocab.txt``: one token a line, its id the line number."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it is not an empty token
    vocab = {token.rstrip("\r"): i for i, token in enumerate(lines)}
    if not vocab:
        raise ValueError(f"{path} is an empty vocabulary")
    return vocab


def _from_hub(bert_class: type, name: str):
    """A model's tokenizer from the hub cache, else the hub; refuse quickly when the hub is unreachable.

    Without the check, a machine with no network spends minutes in huggingface_hub's retries.
    """
    cached = bert_class.from_pretrained(name, local_files_only=True)
    if cached.vocab_size > len(cached.all_special_tokens):
        return cached
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"{name!r} is not a local vocabulary and the Hugging Face hub is off (HF_HUB_OFFLINE)"
        )
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as err:
        raise ValueError(
            f"{name!r} is not a local vocabulary and the Hugging Face hub ({endpoint.hostname}) cannot be "
            f"reached ({err})"
        ) from None
    try:
        return bert_class.from_pretrained(name)
    except OSError as err:
        raise ValueError(f"could not fetch {name!r} from the Hugging Face hub: {err}") from None
