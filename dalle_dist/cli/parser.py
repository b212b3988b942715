"""The scripts' argument parser: DALLE-pytorch's flag names, ``--config file.yaml`` (keys are flag names),
one-line errors, and flags read-only once parsed.

Values come from, in rising priority: the parser's defaults, the YAML file, the command line. Flag values
are checked by their argparse types so a bad value fails before anything is built. What the flags mean is
turned into typed configs once (``DALLEConfig``, ``DataConfig``, ``BackendConfig``); nothing writes back
into the parsed flags, which is why ``Parser.parse`` returns them read-only.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ..errors import UserError


def finite_float(text: str) -> float:
    """A real number: NaN and infinities are refused (``float`` takes them, and they would train or
    sample without a word)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _bounded(name: str, convert: Callable[[str], Any], within: Callable[[Any], bool], words: str):
    """A flag type: ``convert``, then refuse a value outside ``within`` ("must be <words>"). ``name`` is
    what argparse shows for text ``convert`` cannot read ("invalid positive_int value: 'x'")."""

    def parse(text: str) -> Any:
        value = convert(text)
        if not within(value):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


positive_int = _bounded("positive_int", int, lambda v: v >= 1, "a positive integer")
nonneg_int = _bounded("nonneg_int", int, lambda v: v >= 0, ">= 0")
positive_float = _bounded("positive_float", finite_float, lambda v: v > 0, "> 0")
nonneg_float = _bounded("nonneg_float", finite_float, lambda v: v >= 0, ">= 0")
fraction = _bounded("fraction", finite_float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
unit_interval = _bounded("unit_interval", finite_float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
top_k = _bounded(
    "top_k",
    finite_float,
    lambda v: 0.0 <= v < 1.0 or (v >= 1.0 and v == int(v)),
    "a share of the vocabulary in [0, 1) (DALLE-pytorch's meaning, e.g. 0.9) or a whole count >= 1 "
    "(e.g. 256)",
)


def output_folder(text: str) -> Path:
    """A folder that is written into, existing or to be created: refused at parse time when it, or the
    nearest part of it that exists, is a file (``mkdir`` would fail later with a traceback)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder: name a folder (new or existing)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is a file, so {text} cannot be a folder")
            break
    return path


def output_file(text: str) -> Path:
    """A file to be written: refused when it is an existing folder or its folder is missing or a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: name a file to write")
    if path.parent.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} is a file, so {text} cannot be written")
    return path


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class Flags(argparse.Namespace):
    """Parsed flags, read-only: what they mean goes into typed configs, never back into the flags.
    ``given(name)`` tells a value the user set (command line or ``--config``) from a default."""

    __slots__ = ("_given",)  # outside __dict__: vars(flags) stays the flags

    def __init__(self, values: dict[str, Any], given: frozenset[str] = frozenset()) -> None:
        self.__dict__.update(values)
        object.__setattr__(self, "_given", frozenset(given))

    def given(self, name: str) -> bool:
        """Whether the user set ``name`` (on the command line or in ``--config``), not a default."""
        return name in self._given

    def replaced(self, **values: Any) -> Flags:
        """A copy with ``values`` in place of the parsed ones (a flag's meaning resolved, e.g. ``--resume
        auto``); what the user gave stays given."""
        return Flags({**vars(self), **values}, given=self._given)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"parsed flags are read-only (tried to set {name!r}): build a config instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"parsed flags are read-only (tried to delete {name!r})")


class Parser(argparse.ArgumentParser):
    """argparse with ``--config file.yaml`` support."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
        # a plain ``type=float`` flag takes "nan" and "inf": every float flag is finite (groups share this)
        self.register("type", float, finite_float)
        self.add_argument(
            "--config", type=Path, help="YAML file whose keys are flag names; the command line wins"
        )

    def error(self, message: str) -> NoReturn:
        """One line, like every other bad input (argparse would print the usage block first)."""
        hint = ""
        unknown = re.match(r"unrecognized arguments: (-[^\s=]+)", message)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings]
            close = difflib.get_close_matches(unknown.group(1), flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        self.exit(2, f"error: {message}{hint}; see {self.prog} --help\n")

    def parse(
        self, argv: Sequence[str] | None = None, beneath: dict[str, Any] | None = None, source: str = ""
    ) -> Flags:
        """The flags of ``argv`` (default ``sys.argv``), after the ``--config`` file's values, after
        ``beneath`` (values read from ``source``, e.g. the flags a resumed run recorded) and the defaults."""
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        known, _ = pre.parse_known_args(argv)
        saved = [(a, a.default) for a in self._actions], dict(self._defaults)
        try:  # the layers below the command line are this call's: the parser is left as it was
            if beneath:
                self.set_defaults(**self._convert(beneath, source))
            config = self._read_config(known.config) if known.config is not None else {}
            self.set_defaults(**config)
            values = vars(self.parse_args(argv))
            # what the command line set: parse again over a namespace where every flag is already "unset"
            unset = object()
            marked = argparse.Namespace(**{name: unset for name in self.flag_names()})
            on_line = {k for k, v in vars(self.parse_args(argv, marked)).items() if v is not unset}
        finally:
            for action, default in saved[0]:
                action.default = default
            self._defaults = saved[1]
        return Flags(values, given=frozenset(on_line | set(config)))

    def flag_names(self) -> set[str]:
        """Every flag's name (its ``dest``)."""
        return {a.dest for a in self._actions if a.dest != argparse.SUPPRESS}

    def _read_config(self, path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"--config {path} does not exist: check the path") from None
        except yaml.YAMLError as e:
            raise UserError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise UserError(f"--config {path} must be a mapping of flag names to values")
        known = {a.dest for a in self._actions}
        unknown = sorted(k for k in data if k.replace("-", "_") not in known)
        if unknown:
            raise UserError(
                f"--config {path}: unknown keys {', '.join(unknown)} (keys are this script's flag names)"
            )
        return self._convert(data, f"--config {path}")

    def _convert(self, data: dict[str, Any], source: str) -> dict[str, Any]:
        """``data`` (flag name -> value as YAML holds it) as parsed values, checked by the flags' types."""
        values = {}
        for key, value in data.items():
            dest = key.replace("-", "_")
            action = next(a for a in self._actions if a.dest == dest)
            convert = self._registry_get("type", action.type, action.type)
            # YAML reads numbers itself (".nan" too): they are checked as the command line's text would be
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if isinstance(value, str) and convert is not None:
                try:
                    value = convert(value)
                except (argparse.ArgumentTypeError, ValueError) as e:
                    raise UserError(f"{source}: {key}: {e}") from None
            values[dest] = value
        return values


class _Refused(argparse.Action):
    """A DALLE-pytorch flag this project does not take: using it explains why and what to do instead."""

    def __init__(self, option_strings: list[str], dest: str, why: str = "", takes_value: bool = False):
        super().__init__(option_strings, dest, nargs=None if takes_value else 0, help=argparse.SUPPRESS)
        self.why = why

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None):
        parser.error(f"{option} (a DALLE-pytorch flag) is not supported: {self.why}")


def refuse(parser: argparse.ArgumentParser, flag: str, why: str, takes_value: bool = False) -> None:
    """Accept ``flag`` only to refuse it in words (users arrive with DALLE-pytorch command lines)."""
    parser.add_argument(flag, action=_Refused, why=why, takes_value=takes_value, dest=f"_refused_{flag[2:]}")
