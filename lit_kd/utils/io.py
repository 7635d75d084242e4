"""Writing results safely: atomic replacement and run directories that never overwrite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lit_kd.errors import OutputDirError


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a crash mid-write
    leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it; else ``OutputDirError`` naming ``what``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise OutputDirError(f"{what} {path} is not writable ({err.strerror or err})") from None
    return path


def fresh_directory(base: str | os.PathLike) -> Path:
    """``base`` if it does not exist yet, else ``base-2``, ``base-3``, ...: created, never reused."""
    base = Path(base)
    ensure_writable_dir(base.parent, "output folder")
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=False, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
