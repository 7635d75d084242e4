"""Writing results safely: atomic replacement and run directories that never overwrite."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from lit_kd.errors import OutputDirError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed over ``path``, on any failure
    it is removed. A crash mid-write therefore leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it becomes ``path`` (which must be absent or
    an empty directory), on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``), flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
    return Path(path)


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


def numbered_paths(base: str | os.PathLike) -> Iterator[Path]:
    """``base``, ``base-2``, ``base-3``, ...: the names a new output directory takes in turn."""
    base = Path(base)
    yield base
    for n in itertools.count(2):
        yield base.with_name(f"{base.name}-{n}")


def fresh_directory(base: str | os.PathLike) -> Path:
    """The first of ``numbered_paths(base)`` that does not exist yet: created, never reused."""
    ensure_writable_dir(Path(base).parent, "output folder")
    for candidate in numbered_paths(base):
        try:
            candidate.mkdir(parents=False, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable: numbered_paths is endless")


def newest(paths: Iterable[Path]) -> Optional[Path]:
    """The most recently modified of ``paths``, or None."""
    return max(paths, key=os.path.getmtime, default=None)
