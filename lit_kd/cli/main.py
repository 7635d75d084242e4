"""``python -m lit_kd``: LightningCLI for fit/validate/test/predict, plus lit_kd's own commands.

    python -m lit_kd fit --config configs/tiny.yaml --model.loss.name rkl --model.loss.tau 2.5
    python -m lit_kd validate --config configs/tiny.yaml --ckpt_path logs/tiny/version_0/checkpoints/last.ckpt
    python -m lit_kd demo            # the embedded default: distill SmolLM2-135M-Instruct on CPU

Defaults every run gets: ``seed_everything``, a TensorBoardLogger under ``logs/`` (a new
``version_N`` per run, never overwriting an earlier one), a ModelCheckpoint (group ``checkpoint``)
and a Rich progress bar. ``JSONARGPARSE_DEBUG=1`` shows full tracebacks of config errors.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Optional

from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_kd.data import DollyDataModule
from lit_kd.errors import LitKDError
from lit_kd.modules import DistillModule

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "lit_kd"},
    },
}


class LitKDCLI(LightningCLI):
    """LightningCLI bound to ``DistillModule`` and ``DollyDataModule``; hands the tokenizer to the data."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs) -> None:
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # Lightning-internal deprecation
        super().__init__(
            DistillModule,
            DollyDataModule,
            args=args,
            run=run,
            seed_everything_default=1234,
            trainer_defaults=TRAINER_DEFAULTS | {"callbacks": [RichProgressBar()]},
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule.connect(self.model.tokenizer)


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> LitKDCLI:
    """Run LightningCLI (``args`` as on the command line, e.g. ``["fit", "--config", ...]``)."""
    return LitKDCLI(args=args, run=run)


def _demo(args: list[str]) -> None:
    from lit_kd.cli.demo import main as demo_main

    demo_main(args)


COMMANDS: dict[str, Callable[[list[str]], None]] = {"demo": _demo}


def main(args: Optional[list[str]] = None) -> None:
    """Dispatch to lit_kd's own commands or to LightningCLI. Bad input (a ``LitKDError``) ends in one
    line, ``lit_kd: error: ...``, and exit status 2; ``LIT_KD_DEBUG=1`` shows the traceback instead."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            cli_main(args)  # None: LightningCLI reads sys.argv itself
    except LitKDError as err:
        if os.environ.get("LIT_KD_DEBUG"):
            raise
        print(f"lit_kd: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
