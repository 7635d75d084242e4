"""The record a benchmark writes: its figures and what produced them, in ``benchmarks/records/<name>.json``.

    write_record("teacher_cache", {"live_seconds": 96.5, ...})     # at the end of a benchmark's main()
    read_record("teacher_cache")                                     # the README's tables are rendered from it
    stale_sources(read_record("teacher_cache"))                      # the measured files changed since: []

A record names the command as it was run, the commit (and whether ``lit_kd/`` or ``benchmarks/`` had uncommitted
changes), torch's version and threads, the machine, ``THP_MEM_ALLOC_ENABLE``, the date, and the sha256 of every file
of the code it measured: the benchmark script and each ``lit_kd`` (or other benchmark) module the process had
imported. ``stale_sources`` lists those whose content differs now: the record must then be made again by its
command. ``LIT_KD_RECORDS`` names another folder for the records (the tests use a temporary one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
"""The repository: the paths of ``command`` and ``sources`` are relative to it."""
RECORDS_ENV = "LIT_KD_RECORDS"
NOT_MEASURED = ("benchmarks/record.py", "benchmarks/tables.py")
"""Benchmark modules that write and render records: their code is not what a record measures."""
SIGNIFICANT_DIGITS = 6
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def records_dir() -> Path:
    """``$LIT_KD_RECORDS`` if set, else ``benchmarks/records`` of the repository."""
    override = os.environ.get(RECORDS_ENV)
    return Path(override) if override else ROOT / "benchmarks" / "records"


def record_path(name: str) -> Path:
    """The file of record ``name`` (letters, digits, ``_``, ``.``, ``-``: e.g. ``loss_memory-v151936``)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"record name {name!r}: use letters, digits, '_', '.' and '-' only")
    return records_dir() / f"{name}.json"


def write_record(
    name: str,
    results: dict[str, Any],
    *,
    argv: list[str] | None = None,
    sources: Iterable[str] = (),
    cuda_device: str | None = None,
) -> Path:
    """Write record ``name`` atomically and return its path. ``results`` are the benchmark's figures (floats are
    rounded to 6 significant digits). ``argv`` is the command line (default ``sys.argv``: the script, then its
    arguments); ``sources`` adds repository paths of code the benchmark ran in other processes (see
    ``loaded_sources``); ``cuda_device`` names the GPU those processes used (this process's own is found)."""
    argv = list(sys.argv if argv is None else argv)
    script = repo_path(argv[0]) if Path(argv[0]).is_file() else None  # (not for python -c)
    record = {
        "benchmark": Path(argv[0]).name,
        "command": command_line(argv),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "torch": torch_version(),
        "threads": torch_threads(),
        "machine": machine(cuda_device),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": digests([*([script] if script else []), *loaded_sources(), *sources]),
        "results": rounded(results),
    }
    path = record_path(name)
    write_atomically(path, json.dumps(record, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def read_record(name: str) -> dict[str, Any]:
    """Record ``name`` as written (``FileNotFoundError`` when there is none)."""
    return json.loads(record_path(name).read_text(encoding="utf-8"))


def stale_sources(record: dict[str, Any]) -> list[str]:
    """The record's source files whose sha256 differs now, or which no longer exist."""
    stale = []
    for path, digest in record["sources"].items():
        file = ROOT / path
        if not file.is_file() or sha256(file) != digest:
            stale.append(path)
    return stale


def loaded_sources() -> list[str]:
    """Repository paths of the ``lit_kd`` files and benchmark modules (not ``NOT_MEASURED``) this process has
    imported: a benchmark's child process returns them to the parent, which passes them as ``sources``."""
    found = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not os.path.isabs(file) or not os.path.isfile(file):
            continue  # built in, a namespace package, or a made-up name (torch.classes says "_classes.py")
        path = repo_path(file)
        if path and path.endswith(".py") and path.startswith(("lit_kd/", "benchmarks/")) and path not in NOT_MEASURED:
            found.add(path)
    return sorted(found)


def repo_path(path: str | os.PathLike) -> str | None:
    """``path`` relative to the repository (``/``-separated), or None outside it."""
    if not str(path):
        return None
    try:
        return Path(path).resolve().relative_to(ROOT.resolve()).as_posix()
    except ValueError:
        return None


def command_line(argv: list[str]) -> str:
    """``python <script> <arguments>`` with the script relative to the repository, quoted as a shell needs."""
    return "python " + shlex.join([repo_path(argv[0]) or argv[0], *argv[1:]])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(paths: Iterable[str]) -> dict[str, str]:
    """{repository path: sha256 hex}, sorted by path."""
    return {path: sha256(ROOT / path) for path in sorted(set(paths))}


def git(*args: str) -> str | None:
    """``git <args>``'s output in the repository, or None when git fails (no git, not a repository)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit() -> str | None:
    output = git("rev-parse", "HEAD")
    return output.strip() if output else None


def git_dirty() -> bool | None:
    """Whether ``lit_kd/`` or ``benchmarks/`` (its records aside) differ from the commit."""
    output = git("status", "--porcelain", "--", "lit_kd", "benchmarks", ":(exclude)benchmarks/records")
    return None if output is None else bool(output.strip())


def torch_version() -> str:
    import torch

    return torch.__version__


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machine(cuda_device: str | None = None) -> dict[str, Any]:
    """The CPU model, logical CPUs, total memory (GiB), platform and the CUDA device (if one was used)."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib(),
        "platform": platform.platform(),
        "cuda": cuda_device or cuda_in_use(),
    }


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def memory_gib() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def cuda_in_use() -> str | None:
    """The name of the CUDA device this process initialised, if any."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda.get_device_name()


def rounded(value: Any) -> Any:
    """``value`` with floats rounded to ``SIGNIFICANT_DIGITS``, tuples as lists and keys as strings; a non-finite
    float is refused (JSON has none)."""
    if isinstance(value, dict):
        return {str(key): rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a record holds finite numbers only, not {value}")
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
