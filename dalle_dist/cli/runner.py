"""Running a script's ``main``: bad input becomes one ``error:`` line and exit status 2, a rank that fails
under a launcher is named, and the process ends without the teardown that crashes some engines."""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ..data import DataError
from ..errors import UserError
from ..lock import release_all
from ..text import CaptionTooLongError

DISK_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def cli(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Run ``main``; bad input becomes ``error: <message>`` on stderr and exit status 2 (no traceback)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        where = launched_rank()
        try:
            main(argv)
        except (UserError, DataError, CaptionTooLongError) as e:
            print(f"error{where}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "interrupted: the last checkpoint is intact; rerun with --resume to continue", file=sys.stderr
            )
            return 130
        except Exception as e:
            if isinstance(e, OSError) and e.errno in DISK_ERRORS:
                # a full or read-only disk outside a checkpoint write (logs, samples): nothing is torn
                print(
                    f"error{where}: cannot write {e.filename or 'to disk'}: {e.strerror}: free disk space or "
                    "choose another --output, then rerun with --resume (the checkpoints written are intact)",
                    file=sys.stderr,
                )
                return 2
            if not where:
                raise
            # under a launcher, name the rank that failed: the others are ended by the launcher
            traceback.print_exc()
            print(f"error{where}: this rank failed ({type(e).__name__}: {e}); the job stops", file=sys.stderr)
            return 1
        return 0

    return wrapper


def launched_rank() -> str:
    """`` (rank R of N)`` when a launcher started several processes (torchrun / deepspeed set RANK,
    horovodrun HOROVOD_RANK or Open MPI's variable), else an empty string."""
    for rank, size in (
        ("RANK", "WORLD_SIZE"),
        ("HOROVOD_RANK", "HOROVOD_SIZE"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ):
        if rank in os.environ and int(os.environ.get(size, "1")) > 1:
            return f" (rank {os.environ[rank]} of {os.environ[size]})"
    return ""


def exit_with(code: int) -> None:
    """End the process with ``code`` and skip interpreter teardown, where engines' native threads have
    crashed after a finished run (DeepSpeed with gloo: exit 250), turning a success into a failure."""
    release_all()  # os._exit skips atexit: the run directory's lock is let go here, without a takeover note
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
