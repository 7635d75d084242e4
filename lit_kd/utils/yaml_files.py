"""Reading YAML config files with errors that name the file and the position of a syntax error."""

from __future__ import annotations

import os
from typing import Any, Iterable

import yaml

from lit_kd.errors import ConfigError


def load_yaml_file(path: str | os.PathLike, what: str = "config file") -> Any:
    """The parsed content of a YAML file; a missing file or a syntax error is a ``ConfigError`` naming it."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        raise ConfigError(f"{where}: invalid YAML in {what} ({problem}{f', {context}' if context else ''})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: {what} is not UTF-8 text ({err.reason})") from None


def config_files_in(argv: Iterable[str]) -> list[str]:
    """The files given with ``--config FILE`` or ``--config=FILE`` on a command line."""
    argv = list(argv)
    files = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_config_files(argv: Iterable[str]) -> None:
    """Parse every ``--config`` file of a command line first, so a syntax error names its file and line
    (LightningCLI would report it without the file's name). Values that are not files are left to it."""
    for path in config_files_in(argv):
        if os.path.isfile(path):
            load_yaml_file(path)
