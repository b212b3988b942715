"""The exception for bad input: the scripts print its one-line message and exit with status 2."""

import re


class UserError(Exception):
    """A problem the user can fix (a path, a flag, a file); the message names the problem and the fix."""


def load_failure(error: Exception) -> str:
    """The telling part of a loader's error for a one-line message: the global a ``weights_only`` load
    refused, else the first non-empty line."""
    text = str(error)
    found = re.search(r"(Unsupported global: GLOBAL \S+|Unsupported operand \S+)", text)
    if found:
        return found.group(1)
    # torch words a global of a module it blocks outright (os, posix, subprocess, ...) differently
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module", text)
    if blocked:
        return f"Unsupported global: GLOBAL {blocked.group(1)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
