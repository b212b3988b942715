"""The command-line layer every script shares: the parser and its flag types, the flags several scripts
take, and the runner that turns bad input into one line. Scripts and ``python -m`` entry points use it;
nothing below them does."""

from .flags import add_device_flag, add_tokenizer_flags, check_tokenizer_flags, tokenizer_from_flags
from .parser import (
    Flags,
    Parser,
    finite_float,
    fraction,
    int_list,
    nonneg_float,
    nonneg_int,
    output_file,
    output_folder,
    positive_float,
    positive_int,
    refuse,
    str_list,
    top_k,
    unit_interval,
)
from .runner import cli, exit_with, launched_rank

__all__ = [
    "Flags",
    "Parser",
    "add_device_flag",
    "add_tokenizer_flags",
    "check_tokenizer_flags",
    "cli",
    "exit_with",
    "finite_float",
    "fraction",
    "int_list",
    "launched_rank",
    "nonneg_float",
    "nonneg_int",
    "output_file",
    "output_folder",
    "positive_float",
    "positive_int",
    "refuse",
    "str_list",
    "tokenizer_from_flags",
    "top_k",
    "unit_interval",
]
