"""Tokenizer families by name, and loading a tokenizer from the JSON that ``Tokenizer.save`` writes.

Tokenizer files are parsed as JSON data only (never unpickled or evaluated), so a file from elsewhere can
at worst be refused with a ``ValueError``.

Adding a family is one module with one ``register`` and one import in ``__init__.py``::

    # dalle_dist/text/yttm.py
    from .base import Tokenizer
    from .registry import register


    @register
    class YttmTokenizer(Tokenizer):
        family = "yttm"  # the key written into saved files and checkpoints

        # implement vocab_size, encode, _decode, to_dict and from_dict; import an optional
        # dependency (youtokentome) inside the methods so that registering it costs nothing

    # dalle_dist/text/__init__.py
    from .yttm import YttmTokenizer  # importing the module registers the family
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from .base import Tokenizer

T = TypeVar("T", bound=type[Tokenizer])

_FAMILIES: dict[str, type[Tokenizer]] = {}


def register(cls: T) -> T:
    """Class decorator: make ``cls`` loadable under ``cls.family``."""
    if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
        raise TypeError(f"register expects a Tokenizer subclass, got {cls!r}")
    family = cls.__dict__.get("family")  # not inherited: a subclass must name its own family
    if not isinstance(family, str) or not family:
        raise TypeError(f"{cls.__name__} must set a class attribute family = '<name>' to be registered")
    held = _FAMILIES.get(family)
    # the same class seen again (a module reload) may re-register; a different class may not take the name
    if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"tokenizer family {family!r} is already registered by {held.__qualname__}")
    _FAMILIES[family] = cls
    return cls


def available_families() -> list[str]:
    """Names of the registered families, sorted."""
    return sorted(_FAMILIES)


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_dict()`` output, dispatching on its ``family``."""
    if not isinstance(d, dict):
        raise ValueError(f"a tokenizer description is a dict with a 'family' key, got {type(d).__name__}")
    if "family" not in d:
        raise ValueError(
            f"tokenizer description has no 'family' key (keys: {sorted(d)}); "
            f"known families: {', '.join(available_families())}"
        )
    family = d["family"]
    cls = _FAMILIES.get(family) if isinstance(family, str) else None
    if cls is None:
        raise ValueError(
            f"unknown tokenizer family {family!r}; known families: {', '.join(available_families())}"
        )
    return cls.from_dict(d)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer file written by ``Tokenizer.save``."""
    path = Path(path)
    raw = path.read_bytes()
    expected = 'a JSON tokenizer file written by Tokenizer.save ({"family": ..., ...})'
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not {expected}: it is not valid JSON ({err})") from None
    try:
        return tokenizer_from_dict(d)
    except ValueError as err:
        raise ValueError(f"{path} is not {expected}: {err}") from err
