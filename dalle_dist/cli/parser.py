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
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ..errors import UserError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class Flags(argparse.Namespace):
    """Parsed flags, read-only: what they mean goes into typed configs, never back into the flags."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"parsed flags are read-only (tried to set {name!r}): build a config instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"parsed flags are read-only (tried to delete {name!r})")


class Parser(argparse.ArgumentParser):
    """argparse with ``--config file.yaml`` support."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
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

    def parse(self, argv: Sequence[str] | None = None) -> Flags:
        """The flags of ``argv`` (default ``sys.argv``), after the ``--config`` file's values."""
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        known, _ = pre.parse_known_args(argv)
        if known.config is not None:
            self.set_defaults(**self._read_config(known.config))
        return Flags(vars(self.parse_args(argv)))

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
        values = {}
        for key, value in data.items():
            dest = key.replace("-", "_")
            action = next(a for a in self._actions if a.dest == dest)
            if isinstance(value, str) and action.type is not None:
                try:
                    value = action.type(value)
                except (argparse.ArgumentTypeError, ValueError) as e:
                    raise UserError(f"--config {path}: {key}: {e}") from None
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
