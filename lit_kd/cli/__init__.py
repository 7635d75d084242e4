"""The command line: parses and dispatches (``python -m lit_kd --help``); nothing in lit_kd imports it."""

from lit_kd.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
