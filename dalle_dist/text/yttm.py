"""YouTokenToMe BPE (DALLE-pytorch's ``--bpe_path file.model``).

The ``.model`` file's bytes travel base64-encoded in the checkpoint. youtokentome reads models only from
a path, so loading writes them to a temporary file first; and since it aborts the whole process on some
malformed models rather than raising, the bytes are checked in Python before it sees them.

Normalisation is youtokentome's: text is split on whitespace, so runs of whitespace become one space and
the ends are stripped; case and accents are kept. Characters outside the model's alphabet (anything that
was not in its training text: emoji, often CJK) come back as ``<UNK>``. Install it with
``scripts/install_yttm.sh`` (it has no wheel and builds only against Cython < 3).
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import PAD_ID, Tokenizer
from .registry import register

INSTALL_HINT = "youtokentome is not installed: run scripts/install_yttm.sh (it needs Cython < 3)"


@register
class YttmTokenizer(Tokenizer):
    """A youtokentome BPE model. Its own ``<PAD>`` is id 0 by default; a model trained with another
    ``pad_id`` has every id shifted up by one so that 0 stays padding."""

    family = "yttm"

    def __init__(self, model: bytes):
        yttm = _import_yttm()
        specials = _check_model(model)
        with _temp_file(model) as path:
            self._bpe = yttm.BPE(model=str(path), n_threads=1)
        self._model = model
        self._offset = 0 if specials["pad"] == PAD_ID else 1
        self._size = self._bpe.vocab_size() + self._offset
        # the unknown token stays, it marks lost text; padding and sequence markers say nothing about it
        self._ignore = [specials[k] for k in ("pad", "bos", "eos") if specials[k] >= 0]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> YttmTokenizer:
        """Read a youtokentome ``.model`` file."""
        return cls(Path(path).read_bytes())

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 2048) -> YttmTokenizer:
        """Learn a model from ``captions`` (youtokentome wants at least its alphabet plus 4 special ids).

        youtokentome breaks ties between equally frequent pairs in no fixed order, so two trainings on the
        same captions may differ; the saved model is what stays fixed.
        """
        yttm = _import_yttm()
        lines = [" ".join(caption.split()) for caption in captions]
        lines = [line for line in lines if line]
        if not lines:
            raise ValueError("cannot train a YouTokenToMe model on no captions")
        with tempfile.TemporaryDirectory(prefix="yttm-") as tmp:
            data, model = Path(tmp) / "captions.txt", Path(tmp) / "yttm.model"
            data.write_text("\n".join(lines) + "\n", encoding="utf-8")
            try:
                with _quiet_stderr():  # youtokentome's C++ prints its training log there
                    yttm.BPE.train(data=str(data), model=str(model), vocab_size=vocab_size, n_threads=1)
            except ValueError as err:  # e.g. a vocab_size below the captions' alphabet
                raise ValueError(f"youtokentome cannot train: {' '.join(str(err).split())}") from None
            return cls(model.read_bytes())

    @property
    def vocab_size(self) -> int:
        return self._size

    def normalize(self, text: str) -> str:
        """Whitespace collapsed and stripped; characters outside the alphabet become ``<UNK>``."""
        return self.decode(self.encode(text))

    def encode(self, text: str) -> list[int]:
        import youtokentome as yttm

        ids = self._bpe.encode([text], output_type=yttm.OutputType.ID)[0]
        return [i + self._offset for i in ids]

    def _decode(self, ids: list[int]) -> str:
        return self._bpe.decode([[i - self._offset for i in ids]], ignore_ids=self._ignore)[0]

    def save_model(self, path: str | os.PathLike[str]) -> None:
        """Write the youtokentome ``.model`` file itself (what DALLE-pytorch's ``--bpe_path`` reads)."""
        Path(path).write_bytes(self._model)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "model_base64": base64.b64encode(self._model).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> YttmTokenizer:
        cls._check_family(d)
        text = d.get("model_base64")
        if not isinstance(text, str):
            raise ValueError("a 'yttm' tokenizer needs 'model_base64': the .model file, base64-encoded")
        try:
            model = base64.b64decode(text, validate=True)
        except binascii.Error as err:
            raise ValueError(f"'model_base64' is not base64: {err}") from None
        return cls(model)

    # the youtokentome object cannot be pickled (DataLoader workers, deepcopy): go through the bytes
    def __getstate__(self) -> dict[str, Any]:
        return {"model": self._model}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"])


def _import_yttm():
    try:
        import youtokentome
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return youtokentome


def _check_model(model: bytes) -> dict[str, int]:
    """The special ids of a youtokentome model; ``ValueError`` unless it is well formed.

    The format: ``n_chars n_rules``, then ``codepoint id`` per character, ``left right merged`` per
    rule, and ``unk pad bos eos`` (-1 for an absent one).
    """
    bad = "not a YouTokenToMe model"
    try:
        rows = [[int(x) for x in line.split()] for line in model.decode("ascii").splitlines()]
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{bad}: it is not lines of integers") from None
    if not rows or len(rows[0]) != 2 or min(rows[0]) < 0:
        raise ValueError(f"{bad}: the first line is not '<characters> <rules>'")
    n_chars, n_rules = rows[0]
    if len(rows) != n_chars + n_rules + 2:
        raise ValueError(f"{bad}: {len(rows)} lines for {n_chars} characters and {n_rules} rules")
    chars, rules, specials = rows[1 : 1 + n_chars], rows[1 + n_chars : -1], rows[-1]
    if len(specials) != 4 or any(i < -1 for i in specials):
        raise ValueError(f"{bad}: the last line is not '<unk> <pad> <bos> <eos>'")
    size = n_chars + n_rules + sum(i >= 0 for i in specials)
    ids = [i for i in specials if i >= 0]
    for row in chars:
        if len(row) != 2 or not 0 <= row[0] < 0x110000:
            raise ValueError(f"{bad}: a character line is not '<codepoint> <id>'")
        ids.append(row[1])
    for row in rules:
        if len(row) != 3 or any(not 0 <= i < size for i in row):
            raise ValueError(f"{bad}: a rule line is not '<left id> <right id> <merged id>'")
        ids.append(row[2])
    if sorted(ids) != list(range(size)):
        raise ValueError(f"{bad}: its ids are not 0..{size - 1}, each used once")
    if n_chars == 0:
        raise ValueError(f"{bad}: it has no characters")
    return dict(zip(("unk", "pad", "bos", "eos"), specials, strict=True))


@contextmanager
def _temp_file(data: bytes) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="yttm-", suffix=".model")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (native code writes there directly, past ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
