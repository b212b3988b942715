"""The one exception data modules raise for problems in the user's data."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing training data; the message names the file(s) and the fix in one line."""
