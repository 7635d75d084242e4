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

import argparse
import dataclasses
import importlib
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_kd.cli.callbacks import FitSummary, LastCheckpoint, ResumeHint
from lit_kd.cli.checkpoint_io import AtomicCheckpointIO
from lit_kd.data import DollyDataModule
from lit_kd.errors import CheckpointError, LitKDError
from lit_kd.modules import DistillModule
from lit_kd.modules.loading import read_checkpoint
from lit_kd.teacher import TeacherCache, cache_key
from lit_kd.utils.io import ensure_writable_dir, is_out_of_space, newest, out_of_space_error
from lit_kd.utils.yaml_files import check_config_files

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "lit_kd"},
    },
}


def resume_command(args: Optional[list[str]]) -> str:
    """The command that resumes this ``fit`` (its arguments, with ``--ckpt_path last``)."""
    argv = list(sys.argv[1:] if args is None else args)
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["python", "-m", "lit_kd", *kept, "--ckpt_path", "last"])


class LitKDCLI(LightningCLI):
    """LightningCLI bound to ``DistillModule`` and ``DollyDataModule``; hands the tokenizer to the data."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs) -> None:
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # Lightning-internal deprecation
        warnings.filterwarnings("ignore", ".*'set_vital' is deprecated.*")  # torchdata-internal deprecation
        super().__init__(
            DistillModule,
            DollyDataModule,
            args=args,
            run=run,
            seed_everything_default=1234,
            trainer_defaults=TRAINER_DEFAULTS
            | {"callbacks": [RichProgressBar(), FitSummary(), ResumeHint(resume_command(args))]},
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},  # parse errors reach main() and become one line
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `checkpoint` keeps the best checkpoint by a monitored metric; `last_checkpoint` keeps the latest
        # state as last.ckpt (for `--ckpt_path last`). Two callbacks because Lightning >= 2.6 writes
        # save_last's last.ckpt only when a top-k checkpoint is saved at the same step.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
                # a validation replayed after a resume rewrites the same file instead of adding a "-v1" twin
                "checkpoint.enable_version_counter": False,
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
        # last.ckpt is written after validation by LastCheckpoint: the best checkpoint must have recorded the
        # epoch first (a stable sort: the other callbacks keep their order)
        callbacks.sort(key=lambda c: isinstance(c, LastCheckpoint))
        if trainer_config.get("enable_progress_bar") is False:
            kept = [c for c in self.trainer_defaults["callbacks"] if not isinstance(c, RichProgressBar)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": kept}
        if trainer_config.get("plugins") is None:
            trainer_config["plugins"] = [AtomicCheckpointIO()]  # checkpoints written to a temp file, then renamed
        return self._instantiate_trainer(trainer_config, callbacks)

    def before_instantiate_classes(self) -> None:
        """Checks that need no model, before any is loaded: the log directory must be writable, and
        ``--ckpt_path last`` resumes the newest ``last.ckpt`` among this config's runs, in that run's own
        version directory (its first config.yaml is kept; the resumed one is saved beside it)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        logger = config.trainer.logger
        init_args = getattr(logger, "init_args", None)
        save_dir = getattr(init_args, "save_dir", None)
        if save_dir is not None:
            ensure_writable_dir(save_dir, "trainer.logger save_dir", create=False)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last" and save_dir is not None:
            runs = Path(save_dir) / (getattr(init_args, "name", None) or "")
            last = newest(runs.glob("version_*/checkpoints/last.ckpt"))
            if last is None:
                raise CheckpointError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints to resume")
            config.ckpt_path = str(last)
            init_args.version = int(last.parents[1].name.removeprefix("version_"))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config-resumed-{stamp}.yaml"}

    def _parse_ckpt_path(self) -> None:
        """Keep the configuration as given. (LightningCLI >= 2.6 replaces the ``model`` section with the
        hyperparameters stored in ``--ckpt_path``, silently overriding explicit flags such as
        ``--model.loss.tau``.) The checkpoint supplies weights; a checkpoint whose student does not match
        the configured one is refused by ``DistillModule.on_load_checkpoint`` with a clear error."""

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule.connect(self.model.tokenizer)
        self.datamodule.load_split_records()  # bad data files fail here, before any trainer or model work
        self._check_checkpoint_student()
        self._check_teacher_cache()

    def _check_teacher_cache(self) -> None:
        """A ``model.teacher_cache`` that is missing, damaged or built for another teacher, tokenizer or data is
        refused now, before any run directory is written (``DistillModule`` checks it again when it opens it)."""
        if self.subcommand not in ("fit", "validate", "test") or self.model.teacher_cache_path is None:
            return
        cache = TeacherCache.open(self.model.teacher_cache_path)
        records = self.datamodule.load_split_records()
        cache.check(
            cache_key(self.model.teacher_config, self.model.tokenizer, records, self.datamodule.max_length),
            command_hint=" --config <this config> --out " + str(self.model.teacher_cache_path),
        )

    def _check_checkpoint_student(self) -> None:
        """A ``--ckpt_path`` saved for another student is refused now, from its stored hyperparameters,
        before any weights load (``DistillModule.on_load_checkpoint`` checks the tensors themselves)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        path = config.get("ckpt_path")
        if not path or not os.path.isfile(path):
            return
        stored = read_checkpoint(path, mmap=True).get("hyper_parameters", {}).get("student")
        if stored is None:
            return
        stored = stored if isinstance(stored, dict) else dataclasses.asdict(stored)
        configured = dataclasses.asdict(self.model.student_config)
        differing = [k for k in ("path", "gguf_file", "config", "layers") if stored.get(k) != configured.get(k)]
        if differing:
            differences = ", ".join(f"{k}: {stored.get(k)!r} vs {configured.get(k)!r}" for k in differing)
            raise CheckpointError(
                f"{path} was saved from another student architecture than model.student ({differences})"
            )


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> LitKDCLI:
    """Run LightningCLI (``args`` as on the command line, e.g. ``["fit", "--config", ...]``)."""
    return LitKDCLI(args=args, run=run)


# lit_kd's own commands: `python -m lit_kd <name> ...` calls `<module>.main(args)` (imported on demand)
COMMANDS: dict[str, str] = {
    "demo": "lit_kd.cli.demo",
    "cache-teacher": "lit_kd.cli.cache_teacher",
    "objectives": "lit_kd.cli.objectives",
    "evaluate": "lit_kd.cli.evaluate",
    "export": "lit_kd.cli.export",
    "sweep": "lit_kd.cli.sweep",
    "report": "lit_kd.cli.report",
}


def main(args: Optional[list[str]] = None) -> None:
    """Dispatch to lit_kd's own commands or to LightningCLI. Bad input (a ``LitKDError`` or a config that
    does not parse) ends in one line, ``lit_kd: error: ...``, and exit status 2; ``LIT_KD_DEBUG=1`` shows
    the traceback instead."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        check_config_files(argv)
        if argv and argv[0] in COMMANDS:
            importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        else:
            cli_main(args)  # None: LightningCLI reads sys.argv itself
    except (LitKDError, argparse.ArgumentError, OSError, RuntimeError) as err:
        if os.environ.get("LIT_KD_DEBUG"):
            raise
        if not isinstance(err, (LitKDError, argparse.ArgumentError)):
            if not is_out_of_space(err):
                raise
            # a full disk met by a writer that is not lit_kd's own (a logger, the config saver, the Arrow cache)
            where = getattr(err, "filename", None)
            err = out_of_space_error(where) if where else "no space left on the device; free some space and run again"
        print(f"lit_kd: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
