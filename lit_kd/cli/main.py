"""``python -m lit_kd``: LightningCLI for fit/validate/test/predict, plus lit_kd's own commands.

    python -m lit_kd fit --config configs/tiny.yaml --model.loss.name rkl --model.loss.tau 2.5
    python -m lit_kd validate --config configs/tiny.yaml --ckpt_path logs/tiny/version_0/checkpoints/last.ckpt
    python -m lit_kd demo            # the embedded default: distill SmolLM2-135M-Instruct on CPU

Defaults every run gets: ``seed_everything``, a TensorBoardLogger under ``logs/`` (a new
``version_N`` per run, never overwriting an earlier one), two ModelCheckpoints (group ``checkpoint``:
the best by a monitored metric; group ``last_checkpoint``: the latest, as last.ckpt), a Rich progress
bar and ``fit_summary.json`` in the log directory. ``JSONARGPARSE_DEBUG=1`` shows full tracebacks of
config errors.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_kd.cli.callbacks import FitSummary
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
            trainer_defaults=TRAINER_DEFAULTS | {"callbacks": [RichProgressBar(), FitSummary()]},
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `checkpoint` keeps the best checkpoint by a monitored metric; `last_checkpoint` keeps the latest
        # state as last.ckpt (for `--ckpt_path last`). Two callbacks because Lightning >= 2.6 writes
        # save_last's last.ckpt only when a top-k checkpoint is saved at the same step.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The always-on callbacks step aside when the config switches their feature off
        (``trainer.enable_checkpointing: false``, ``trainer.enable_progress_bar: false``), instead of
        Lightning refusing the combination."""
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if trainer_config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if trainer_config.get("enable_progress_bar") is False:
            kept = [c for c in self.trainer_defaults["callbacks"] if not isinstance(c, RichProgressBar)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": kept}
        return self._instantiate_trainer(trainer_config, callbacks)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule.connect(self.model.tokenizer)


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> LitKDCLI:
    """Run LightningCLI (``args`` as on the command line, e.g. ``["fit", "--config", ...]``)."""
    return LitKDCLI(args=args, run=run)


# lit_kd's own commands: `python -m lit_kd <name> ...` calls `<module>.main(args)` (imported on demand)
COMMANDS: dict[str, str] = {
    "demo": "lit_kd.cli.demo",
    "objectives": "lit_kd.cli.objectives",
    "evaluate": "lit_kd.cli.evaluate",
    "export": "lit_kd.cli.export",
    "sweep": "lit_kd.cli.sweep",
    "report": "lit_kd.cli.report",
}


def main(args: Optional[list[str]] = None) -> None:
    """Dispatch to lit_kd's own commands or to LightningCLI. Bad input (a ``LitKDError``) ends in one
    line, ``lit_kd: error: ...``, and exit status 2; ``LIT_KD_DEBUG=1`` shows the traceback instead."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        else:
            cli_main(args)  # None: LightningCLI reads sys.argv itself
    except LitKDError as err:
        if os.environ.get("LIT_KD_DEBUG"):
            raise
        print(f"lit_kd: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
