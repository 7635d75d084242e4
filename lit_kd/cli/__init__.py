"""Command line: LightningCLI (fit/validate/test/predict) and lit_kd's own commands."""

from lit_kd.cli.main import LitKDCLI, cli_main, main

__all__ = ["LitKDCLI", "cli_main", "main"]
