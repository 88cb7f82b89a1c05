"""One ficha with an embedded NATS server per data dir.

The embedded nats-server keeps its JetStream store under ``FICHA_DATA_DIR`` and ``ficha
up`` writes its address into ``nats.url`` there: a second instance on the same folder
would start a second server on the same store and, on its way out, delete the first one's
address. The lock is an exclusive ``flock`` on ``ficha.lock``, held for the life of the
process: the operating system drops it however the process ends (a crash or a kill -9
leaves no stale lock), and the file names the holder for the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "ficha.lock"


class AlreadyRunning(Exception):
    """Another ficha holds this data dir; the message says which and what to do."""


class InstanceLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning (at once: no waiting)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(
                f"ficha is already running on {self.path.parent}"
                + (f" (pid {holder})" if holder else "")
                + ": stop it first, or give this one its own FICHA_DATA_DIR (and, on "
                "PostgreSQL, its own FICHA_DATABASE_SCHEMA)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
