"""One owner per directory: a lock file naming its owner (pid, host, start time), held with ``flock``.

    with DirectoryLock(sweep_dir / ".lock", "sweep directory"):
        ...                                        # a second process gets LockedError naming the owner

The kernel releases an ``flock`` when its process dies, so a lock file left by a killed process on this
host is taken over by the next one (its stale owner is reported). A lock whose owner is on another host
cannot be checked from here (``flock`` need not cross NFS): that is an error saying which host holds it and
how to clear it. The file is deleted on a clean exit.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from lit_kd.errors import LockedError


def _owner_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (since {owner.get('started', '?')})"


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}


class DirectoryLock:
    """An exclusive, non-blocking lock on ``path`` (a file), as a context manager or with acquire/release."""

    def __init__(self, path: str | os.PathLike, what: str, subject: Optional[str | os.PathLike] = None) -> None:
        """``what`` and ``subject`` name what is locked in errors (``subject`` defaults to the lock file's folder)."""
        self.path = Path(path)
        self.what = what
        self.subject = Path(subject) if subject is not None else self.path.parent
        self.fd: Optional[int] = None
        self.took_over: Optional[dict[str, Any]] = None
        """The owner recorded in a stale lock file this process took over (None: the file was new)."""

    def acquire(self, wait: float = 0.0) -> "DirectoryLock":
        """Take the lock; with ``wait`` > 0, retry for that many seconds while another live process holds it."""
        if self.fd is not None:
            return self  # already held (``with lock.acquire(wait=...):``)
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._try_acquire()
            except LockedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    def _try_acquire(self) -> "DirectoryLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # retried only when the file is replaced between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                for _ in range(40):  # the owner writes its record just after taking the lock: give it a moment
                    if owner:
                        break
                    time.sleep(0.05)
                    owner = _read_owner(fd)
                os.close(fd)
                raise LockedError(
                    f"{self.what} {self.subject} is in use by {_describe(owner)}; wait until it finishes "
                    f"(lock file: {self.path})"
                ) from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the previous owner deleted it while we opened it: try the new file
                os.close(fd)
                continue
            owner = _read_owner(fd)
            if owner and owner.get("host") != socket.gethostname():
                os.close(fd)
                raise LockedError(
                    f"{self.what} {self.subject} is locked by {_describe(owner)}, which cannot be checked from "
                    f"this host; if that process is gone, delete {self.path} and run again"
                )
            self.took_over = owner or None
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(_owner_record()) + "\n").encode())
            os.fsync(fd)
            self.fd = fd
            return self
        raise LockedError(f"could not lock {self.path}: it keeps being replaced by another process")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still holding the flock: nobody else owns the file now
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
