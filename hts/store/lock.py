"""One writer per store: a lock that a killed writer never leaves behind.

Two drivers appending to one store would each recompute what the other has
not committed and overwrite each other's ledger.  :class:`StoreLock` takes a
POSIX record lock (``fcntl.lockf``) on ``<store>.lock`` beside the store: the
kernel drops it when the holding process exits, however it dies (SIGKILL, a
lost node's process), so there is never a stale lock to clear by hand.  Record
locks, unlike ``flock``, also hold across NFS and the parallel file systems
of clusters (Lustre, GPFS) mounted with locking.  The file says who holds it
(host, PID, command, since when), for the error the next writer prints.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["StoreError", "StoreLock", "StoreLockedError"]


class StoreError(RuntimeError):
    """A store that cannot be opened for writing; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process is writing the store."""


class StoreLock:
    """The write lock of one store (``<store>.lock``), held until :meth:`release` or exit."""

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = self.store.with_name(self.store.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(
                f"{self.store}: cannot write here ({err.strerror}: {self.path}); "
                "give a store path on a writable file system (--store)"
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise StoreLockedError(
                f"{self.store}: another hts run is writing this store ({holder}). Wait for it "
                "to finish or stop it; its lock goes with its process, however it ends."
            ) from None
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv[:4]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the file stays: removing it could race with the next writer)."""
        if self._fd is None:
            return
        import fcntl

        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode())
        return f"PID {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
    except (ValueError, KeyError, UnicodeDecodeError):
        return "a process whose details are not readable"
