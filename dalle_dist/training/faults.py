"""Fault injection for the reliability tests (tests/faults/): faults named in ``DALLE_DIST_FAULTS``.

``DALLE_DIST_FAULTS="nan_loss@3,nan_loss@5*2:1"`` makes the loss NaN at training step 3 on every rank, and
twice at step 5 (a skipped batch does not advance the step) on rank 1 only; ``kill_in_save@4`` kills the
root process with SIGKILL while it writes the checkpoint of step 4 (every file written to the staging
folder, nothing renamed into place yet); ``corrupt_in_save@4`` flips bytes of that checkpoint's weights at
the same moment (as a failing disk would); ``raise@3:1`` raises an error on rank 1 at step 3; ``kill@5:1``
kills rank 1 with SIGKILL at step 5 (a dead rank, mid-run). Each fault fires as often as asked, then never
again, and only in a job's first attempt: processes a launcher restarts (torchrun sets
``TORCHELASTIC_RESTART_COUNT``) run clean, as a restarted job on healthy hardware would. Unset (the normal
case) nothing is injected.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from torch import Tensor

from ..errors import UserError

KINDS = ("nan_loss", "kill_in_save", "corrupt_in_save", "raise", "kill")
_ENTRY = re.compile(r"(?P<kind>\w+)@(?P<step>\d+)(?:\*(?P<times>\d+))?(?::(?P<rank>\d+))?")


def _parse(text: str) -> dict[tuple[str, int, int | None], int]:
    faults: dict[tuple[str, int, int | None], int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise UserError(f"DALLE_DIST_FAULTS entry {entry!r}: write KIND@STEP[*TIMES][:RANK]")
        if match["kind"] not in KINDS:
            raise UserError(
                f"DALLE_DIST_FAULTS: unknown fault {match['kind']!r}: choose from {', '.join(KINDS)}"
            )
        rank = int(match["rank"]) if match["rank"] else None
        faults[(match["kind"], int(match["step"]), rank)] = int(match["times"] or 1)
    return faults


class Faults:
    """The faults asked for in the environment, each with how many times it still fires."""

    def __init__(self, text: str | None = None) -> None:
        self.pending = _parse(os.environ.get("DALLE_DIST_FAULTS", "") if text is None else text)
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
            self.pending = {}

    def _fire(self, kind: str, step: int, rank: int) -> bool:
        for key in ((kind, step, None), (kind, step, rank)):
            if self.pending.get(key, 0) > 0:
                self.pending[key] -= 1
                return True
        return False

    def loss(self, loss: Tensor, step: int, rank: int) -> Tensor:
        """``loss``, or NaN where a ``nan_loss`` fault is due (an error where a ``raise`` one is, death where
        a ``kill`` one is)."""
        if self.pending and self._fire("kill", step, rank):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pending and self._fire("raise", step, rank):
            raise RuntimeError(f"injected fault at step {step}")
        if self.pending and self._fire("nan_loss", step, rank):
            return loss * float("nan")
        return loss

    def in_save(self, step: int, rank: int, staged: Path) -> None:
        """Faults of a checkpoint whose files are all written to ``staged`` but not yet renamed into place:
        die at once (SIGKILL: no clean-up, no flushing), or damage the weights file."""
        if self.pending and self._fire("kill_in_save", step, rank):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pending and self._fire("corrupt_in_save", step, rank):
            with open(staged / "model.safetensors", "r+b") as f:
                f.seek(-8, os.SEEK_END)
                tail = f.read(8)
                f.seek(-8, os.SEEK_END)
                f.write(bytes(b ^ 0xFF for b in tail))
