"""The tokenizer that the scripts' flags (``--bpe_path``, ``--hug``, ``--chinese``, ``--chinese_vocab``) name.

``--bpe_path`` is told apart by suffix and content: a ``.model`` file is YouTokenToMe; a JSON file with a
``"family"`` key was written by ``Tokenizer.save`` (``python -m dalle_dist.text.train_bpe``, or a
checkpoint's ``tokenizer.json``); a JSON file with a ``"model"`` key is a Hugging Face ``tokenizer.json``
(``--hug`` insists on that). Every problem is a ``ValueError`` whose one line names the flag and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Tokenizer
from .chinese import DEFAULT_MODEL, ChineseTokenizer
from .hf import HuggingFaceTokenizer
from .registry import tokenizer_from_dict
from .yttm import YttmTokenizer

EXPECTED = (
    "expected a .json written by dalle_dist (python -m dalle_dist.text.train_bpe), a Hugging Face "
    "tokenizer.json, or a YouTokenToMe .model"
)


def read_tokenizer_file(path: Path, hug: bool = False) -> Tokenizer:
    """The tokenizer in the ``--bpe_path`` file ``path``; ``hug`` requires a Hugging Face tokenizer.json."""
    flag = f"--bpe_path {path}"
    if path.is_dir():
        raise ValueError(f"{flag} is a folder: give the tokenizer file itself ({EXPECTED})")
    if not path.is_file():
        raise ValueError(f"{flag} does not exist: give a tokenizer file ({EXPECTED})")
    if path.suffix == ".model" and not hug:
        try:
            return YttmTokenizer.from_file(path)
        except ImportError as err:
            raise ValueError(f"{flag} is a YouTokenToMe model but {err}") from None
        except ValueError as err:
            raise ValueError(f"{flag}: {err} ({EXPECTED})") from None
    try:
        d = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        if hug:
            raise ValueError(f"--hug: {path} is not a Hugging Face tokenizer.json (it is not JSON)") from None
        raise ValueError(f"{flag} is not JSON: {EXPECTED}") from None
    if hug and not (isinstance(d, dict) and "model" in d):
        family = d.get("family") if isinstance(d, dict) else None
        fix = f"it holds a dalle_dist {family!r} tokenizer: drop --hug" if family else EXPECTED
        raise ValueError(f"--hug: {path} is not a Hugging Face tokenizer.json ({fix})")
    try:
        if isinstance(d, dict) and "family" in d:
            return tokenizer_from_dict(d)
        if isinstance(d, dict) and "model" in d:
            return HuggingFaceTokenizer.from_file(path)
    except ImportError as err:
        raise ValueError(f"{flag}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None
    raise ValueError(f"{flag} has neither a 'family' nor a 'model' key: {EXPECTED}")


def chinese_tokenizer(vocab: str | None) -> ChineseTokenizer:
    """``--chinese [--chinese_vocab DIR]``: a BERT Chinese tokenizer."""
    source = vocab or DEFAULT_MODEL
    try:
        return ChineseTokenizer.from_vocab(source)
    except ImportError as err:
        raise ValueError(f"--chinese: {err}") from None
    except (ValueError, OSError) as err:
        raise ValueError(
            f"--chinese_vocab {source}: {err}; pass --chinese_vocab DIR, a folder (or file) with BERT's "
            "vocab.txt"
        ) from None


def tokenizer_from_options(
    bpe_path: Path | None = None, hug: bool = False, chinese: bool = False, chinese_vocab: str | None = None
) -> Tokenizer | None:
    """The tokenizer the flags name, or ``None`` when they name none (a run then trains its own BPE)."""
    chinese = chinese or chinese_vocab is not None
    if chinese and bpe_path is not None:
        raise ValueError("--chinese and --bpe_path each choose the tokenizer: give one of them")
    if hug and bpe_path is None:
        raise ValueError("--hug reads --bpe_path as a Hugging Face tokenizer.json: add --bpe_path FILE")
    if chinese:
        return chinese_tokenizer(chinese_vocab)
    return read_tokenizer_file(bpe_path, hug) if bpe_path is not None else None


def check_matches(
    tokenizer: Tokenizer,
    bpe_path: Path | None = None,
    hug: bool = False,
    chinese: bool = False,
    chinese_vocab: str | None = None,
    who: str = "generate.py",
) -> None:
    """For scripts that read a checkpoint (``generate.py``, a resumed or fine-tuned ``train_dalle.py``):
    tokenizer flags, which they do not need, must agree with the checkpoint's.

    ``--hug`` and ``--chinese`` alone check the family; a file or a vocabulary is read and compared.
    """
    drop = f"{who} takes the tokenizer from the checkpoint: drop the tokenizer flags"
    has = f"the checkpoint's tokenizer is {tokenizer.family!r} with {tokenizer.vocab_size} ids"
    if (chinese or chinese_vocab is not None) and tokenizer.family != ChineseTokenizer.family:
        raise ValueError(f"--chinese does not match: {has}; {drop}")
    if hug and tokenizer.family != HuggingFaceTokenizer.family:
        raise ValueError(f"--hug does not match: {has}; {drop}")
    given, flag = None, None
    if bpe_path is not None:
        given, flag = read_tokenizer_file(bpe_path, hug), f"--bpe_path {bpe_path}"
    elif chinese_vocab is not None:
        given, flag = chinese_tokenizer(chinese_vocab), f"--chinese_vocab {chinese_vocab}"
    if given is not None and given.to_dict() != tokenizer.to_dict():
        raise ValueError(
            f"{flag} ({given.family!r}, {given.vocab_size} ids) is not the tokenizer the model was trained "
            f"with ({has}); {drop}"
        )
