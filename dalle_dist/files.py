"""File-system helpers shared by every writer of durable files (checkpoints, token caches)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a folder's entries) to disk: the step before an atomic rename counts."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
