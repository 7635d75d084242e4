"""Writing results safely: atomic replacement, run directories that never overwrite, a full disk as one clear
error, and the permissions the user's umask gives any new file.

Temporary files and folders are created beside their target (``.<name>.<random>.tmp<suffix>``) with mode
0666/0777 masked by the umask, like any file a program creates with ``open``: results, checkpoints and
exports stay readable by whoever the user's umask lets read them (``tempfile.mkstemp`` would make them 0600).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from lit_kd.errors import OutOfSpaceError, OutputDirError

OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp.*$")
"""Names of the temporaries ``atomic_path`` and ``atomic_directory`` create (a killed writer leaves one)."""


def _temporary_sibling(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp{suffix}")


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_space(folder: str | os.PathLike) -> Optional[int]:
    """Bytes available to this user in ``folder`` (None where the file system cannot tell)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def is_out_of_space(err: BaseException) -> bool:
    """An ``OSError`` ENOSPC/EDQUOT, or a writer's error that says the same (torch's zip writer raises a
    ``RuntimeError`` "file write failed" with the OS error in its text)."""
    if isinstance(err, OSError) and err.errno in OUT_OF_SPACE_ERRNOS:
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def out_of_space_error(
    path: str | os.PathLike, needed: Optional[int] = None, free_before: Optional[int] = None
) -> OutOfSpaceError:
    """The one-line error for a write that did not fit: the path, the space it needs (when known), the free space
    (``free_before``: as measured before the write began, which a failed write's cleanup does not change)."""
    folder = Path(path).parent
    free = free_before if free_before is not None else free_space(folder)
    details = []
    if needed is not None:
        details.append(f"it needs about {human_bytes(needed)}")
    if free is not None:
        details.append(f"{human_bytes(free)} free in {folder}" + (" when it began" if free_before is not None else ""))
    detail = f" ({'; '.join(details)})" if details else ""
    return OutOfSpaceError(
        f"no space left on the device writing {path}{detail}; free some space and run the same command again "
        "(files written earlier are intact)"
    )


def check_free_space(path: str | os.PathLike, needed: Optional[int]) -> Optional[int]:
    """Raise ``OutOfSpaceError`` before writing ``needed`` bytes to ``path`` when they cannot fit; return the free
    space measured (None where the file system cannot tell)."""
    free = free_space(Path(path).parent)
    if needed is not None and free is not None and free < needed:
        raise out_of_space_error(path, needed)
    return free


def current_umask() -> int:
    """The process's umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: str | os.PathLike) -> None:
    """Give everything under ``folder`` the mode the umask gives a new file or folder (some writers, such as
    ``save_pretrained``'s safetensors file, create theirs private)."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextmanager
def atomic_path(path: str | os.PathLike, size_hint: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed over ``path``, on any failure
    it is removed. A crash mid-write therefore leaves the previous file intact. ``size_hint`` (bytes, when
    known) is checked against the free space first; running out of space is an ``OutOfSpaceError`` naming
    ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = check_free_space(path, size_hint)
    while True:
        tmp = _temporary_sibling(path, path.suffix)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise (out_of_space_error(path, size_hint) if is_out_of_space(err) else err) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_out_of_space(err):
            raise out_of_space_error(path, size_hint, free) from None
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike, size_hint: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it becomes ``path`` (which must be absent or
    an empty directory), on any failure it is removed (see ``atomic_path`` for ``size_hint``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = check_free_space(path, size_hint)
    tmp = _temporary_sibling(path)
    try:
        tmp.mkdir(mode=0o777)
    except OSError as err:
        raise (out_of_space_error(path, size_hint) if is_out_of_space(err) else err) from None
    try:
        yield tmp
        follow_umask(tmp)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_out_of_space(err):
            raise out_of_space_error(path, size_hint, free) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``), flushed to disk before the rename."""
    data = text.encode("utf-8")
    with atomic_path(path, size_hint=len(data)) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    return Path(path)


PREVIOUS_SUFFIX = ".previous"
"""What ``replace_path`` calls a directory it is replacing, while the new one is renamed into place."""


def replace_path(written: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make ``written`` (a complete file or folder) ``target``. A file replaces a file atomically (``os.replace``);
    a folder (a sharded checkpoint) cannot replace a folder in one rename, so the old one is first renamed aside
    (``.<name>.<random>.tmp.previous``), then ``written`` into place, then the old one removed: a kill in between
    leaves the old one aside, which ``restore_interrupted_replacements`` puts back."""
    written, target = Path(written), Path(target)
    if not target.is_dir() or target.is_symlink():
        os.replace(written, target)
        return
    aside = _temporary_sibling(target, PREVIOUS_SUFFIX)
    os.replace(target, aside)
    os.replace(written, target)
    shutil.rmtree(aside, ignore_errors=True)


def restore_interrupted_replacements(folder: str | os.PathLike) -> list[Path]:
    """Put back a folder that a killed ``replace_path`` had renamed aside before its replacement was in place
    (the target is missing); returns the targets restored. Call it before ``remove_stale_temporaries``."""
    restored = []
    folder = Path(folder)
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if TEMPORARY_NAME.match(entry.name) and entry.name.endswith(f".tmp{PREVIOUS_SUFFIX}"):
            target = folder / entry.name[1:].rsplit(".", 3)[0]
            if not target.exists():
                os.replace(entry, target)
                restored.append(target)
    return restored


def remove_stale_temporaries(folder: str | os.PathLike, of: Optional[str] = None) -> list[Path]:
    """Delete the temporaries a killed writer left in ``folder`` (only names ``atomic_path`` and
    ``atomic_directory`` create; with ``of``, only those of the target named ``of``); returns what was removed.
    Call it only where no other process writes them."""
    folder = Path(folder)
    own = re.compile(rf"^\.{re.escape(of)}\.[0-9a-f]{{16}}\.tmp") if of is not None else None
    removed = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if TEMPORARY_NAME.match(entry.name) and (own is None or own.match(entry.name)):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def ensure_writable_dir(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Prove a file can be written in ``path`` (created when ``create``; otherwise its nearest existing
    ancestor is probed and nothing is left behind); else ``OutputDirError`` naming ``what``."""
    path = Path(path)
    probe_dir = path
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        else:
            while not probe_dir.exists() and probe_dir != probe_dir.parent:
                probe_dir = probe_dir.parent
            if not probe_dir.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(probe_dir))
        probe = _temporary_sibling(probe_dir / "write-test")
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.unlink(probe)
    except OSError as err:
        if is_out_of_space(err):
            raise out_of_space_error(probe_dir / "write-test") from None
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
