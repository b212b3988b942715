"""The interface every tokenizer family implements, and the batch ``tokenize`` they all share."""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

PAD_ID = 0  # every family reserves id 0 for padding; DALLE and CLIP rely on it


class CaptionTooLongError(ValueError):
    """A caption has more tokens than the text context and truncation was not asked for."""

    # The message is the only positional argument so that the error survives pickling and DataLoader
    # workers (which re-raise with ``type(err)(message)``); the details travel as attributes.
    def __init__(self, message: str, *, caption: str = "", num_tokens: int = 0, context_length: int = 0):
        super().__init__(message)
        self.caption = caption
        self.num_tokens = num_tokens
        self.context_length = context_length


class Tokenizer(ABC):
    """Text ↔ token ids. Ids lie in ``[0, vocab_size)``; 0 is padding and ``encode`` never produces it.

    A family implements ``vocab_size``, ``encode``, ``_decode``, ``to_dict`` and ``from_dict``, and is
    registered under ``family`` (see ``registry.py``); ``decode``, ``tokenize`` and ``save`` come from here.
    """

    family: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, padding included: the ``num_text_tokens`` a model needs."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without padding or special tokens."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Text of ``ids``, which ``decode`` has already stripped of padding and out-of-range ids."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: ``{"family": ..., **whatever from_dict needs}``."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Rebuild from ``to_dict`` output; malformed input raises ``ValueError``."""

    def normalize(self, text: str) -> str:
        """The form of ``text`` that ``decode(encode(text))`` gives back; families that normalise override."""
        return text

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of ``ids`` (a list or a 1-D tensor); padding, special and out-of-range ids are skipped."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes a 1-D tensor of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self._decode([int(i) for i in ids if PAD_ID < int(i) < self.vocab_size])

    def tokenize(
        self, texts: str | Sequence[str], context_length: int = 256, truncate_text: bool = False
    ) -> Tensor:
        """``[len(texts), context_length]`` LongTensor of ids, right-padded with 0.

        A caption with more than ``context_length`` tokens raises ``CaptionTooLongError`` unless
        ``truncate_text``, which keeps its first ``context_length`` tokens.
        """
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"captions must be str, got {type(text).__name__} at position {row}")
            ids = self.encode(text)
            if len(ids) > context_length:
                if not truncate_text:
                    raise _too_long(text, len(ids), context_length)
                ids = ids[:context_length]
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``to_dict()`` as JSON; a crash mid-write leaves any previous file intact."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def _check_family(cls, d: dict[str, Any]) -> None:
        """For ``from_dict``: refuse a dict written by another family."""
        if not isinstance(d, dict) or d.get("family") != cls.family:
            got = d.get("family") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{cls.__name__} expects a dict with family {cls.family!r}, got {got!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, vocab_size={self.vocab_size})"


def _too_long(caption: str, num_tokens: int, context_length: int) -> CaptionTooLongError:
    shown = caption[:40] + ("..." if len(caption) > 40 else "")
    return CaptionTooLongError(
        f"caption {shown!r} has {num_tokens} tokens, more than the limit of {context_length}: "
        "pass --truncate_captions (truncate_text=True) to cut it, or a larger --text_seq_len",
        caption=caption,
        num_tokens=num_tokens,
        context_length=context_length,
    )
