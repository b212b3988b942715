"""The lock that gives a run directory one writer at a time.

Two processes training into one ``--output`` would both write checkpoints and prune each other's. The
lock is an ``flock`` on ``RUN/lock``: the kernel drops it when its holder exits however it exits (a
``kill -9`` too), so a lock never outlives its process and needs no staleness guess; the file's text only
names the holder for the message (pid, host, start time), and a holder that died without cleaning up is
reported when its lock is taken over.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import UserError


class RunLock:
    """An exclusive, non-blocking lock on ``path``; ``acquire`` refuses in one line while another process
    holds it. Held until ``release`` or the process's exit."""

    def __init__(self, path: Path, flag: str = "--output") -> None:
        self.path = Path(path)
        self.flag = flag
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the holder a dead process left in the file

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock; ``UserError`` naming the holder when a live process has it."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(_read(fd))
            os.close(fd)
            raise UserError(
                f"{self.flag} {self.path.parent} is in use: {holder} is writing into it; wait for it to "
                f"finish or stop it, then rerun (a second writer would overwrite and prune its checkpoints)"
            ) from None
        except OSError:
            os.close(fd)
            raise
        previous = _read(fd)
        if previous.get("pid") is not None:  # it wrote its name and never released: it died holding it
            self.took_over = previous
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        atexit.register(self.release)  # a run that stops on an error releases it too, without a takeover note
        return self

    def release(self) -> None:
        """Empty the holder's name and drop the lock (the file stays: removing it would race a waiter)."""
        if self._fd is None:
            return
        _HELD.pop(self.path.resolve(), None)
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def describe_takeover(self) -> str | None:
        """Once, a line for the log when the lock was left by a process that died; else None."""
        if self.took_over is None:
            return None
        holder, self.took_over = _holder(self.took_over), None
        return f"{self.path}: took over the lock of {holder}, which ended without releasing it"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# a process holds a path once: a second flock on a new descriptor of the same file would refuse itself
_HELD: dict[Path, RunLock] = {}


def hold(path: Path, flag: str = "--output") -> RunLock:
    """The lock on ``path``, acquired (or the one this process already holds)."""
    key = Path(path).resolve()
    lock = _HELD.get(key) or RunLock(path, flag)
    lock.acquire()
    _HELD[key] = lock
    return lock


def release_all() -> None:
    """Release every lock this process holds (a process that ends by ``os._exit`` skips ``atexit``)."""
    for lock in list(_HELD.values()):
        lock.release()


def release(path: Path) -> None:
    """Release this process's lock on ``path`` if it holds one."""
    lock = _HELD.get(Path(path).resolve())
    if lock is not None:
        lock.release()


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder(record: dict[str, Any]) -> str:
    if not record.get("pid"):
        return "another process"
    return f"pid {record['pid']} on {record.get('host', '?')} (since {record.get('since', '?')})"
