"""``python -m lit_kd``: one entry, every command a subcommand (``python -m lit_kd --help`` lists them).

    python -m lit_kd fit --config configs/tiny.yaml --model.loss.name rkl --model.loss.tau 2.5
    python -m lit_kd validate --config configs/tiny.yaml --ckpt_path logs/tiny/version_0/checkpoints/last.ckpt
    python -m lit_kd demo            # the embedded default: distill SmolLM2-135M-Instruct on CPU
    python -m lit_kd sweep --help    # every option, from the function's type hints and docstring

Commands on a fit configuration (LightningCLI: ``--config``, ``--model.*``, ``--data.*``, ``--trainer.*``): fit,
validate, test, predict, demo, cache-teacher, generate-data. Commands of their own (typed functions, one jsonargparse
parser): evaluate, export, sweep, report, objectives.

Defaults every run gets: ``seed_everything``, a TensorBoardLogger under ``logs/`` (a new ``version_N`` per run,
never overwriting an earlier one), two ModelCheckpoints (group ``checkpoint``: the best by a monitored metric;
group ``last_checkpoint``: the latest, as last.ckpt), a progress display (Rich in a terminal, plain lines in a
log), the learning rate and throughput monitors, the run's hyperparameters in TensorBoard's HParams tab, and
``fit_summary.json`` in the log directory. ``JSONARGPARSE_DEBUG=1`` shows full tracebacks of config errors.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, ThroughputMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_kd.cli.callbacks import FitSummary, HParamsSummary, LastCheckpoint, LineProgress, ResumeHint
from lit_kd.cli.trainer import Trainer
from lit_kd.data import DollyDataModule
from lit_kd.data.collate import batch_rows, batch_tokens
from lit_kd.errors import CheckpointError, LitKDError
from lit_kd.models import StudentConfig
from lit_kd.modules import DistillModule
from lit_kd.modules.loading import checkpoint_hparams, read_checkpoint
from lit_kd.teacher import TeacherCache, cache_key
from lit_kd.utils.io import ensure_writable_dir, is_out_of_space, newest, out_of_space_error
from lit_kd.utils.paths import BASE_CONFIG
from lit_kd.utils.yaml_files import check_config_files


def with_base(args: list[str], run: bool) -> list[str]:
    """The command line with ``configs/base.yaml`` read first: the shared base is the CLI's default, so no other
    config restates it (later ``--config`` files and flags override it)."""
    if not BASE_CONFIG.is_file():
        return args
    if run and args and args[0] in LightningCLI.subcommands():
        return [args[0], "--config", str(BASE_CONFIG), *args[1:]]
    return ["--config", str(BASE_CONFIG), *args] if not run else args


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


def default_callbacks(args: Optional[list[str]]) -> list:
    """Progress (Rich in a terminal, plain lines otherwise), LR and throughput monitors, HParams, fit summary,
    and the resume hint on Ctrl-C."""
    progress = RichProgressBar() if sys.stdout.isatty() else LineProgress()
    return [
        progress,
        LearningRateMonitor(logging_interval="step"),
        ThroughputMonitor(batch_size_fn=batch_rows, length_fn=batch_tokens, window_size=10),
        HParamsSummary(),
        FitSummary(),
        ResumeHint(resume_command(args)),
    ]


class LitKDCLI(LightningCLI):
    """LightningCLI bound to ``DistillModule`` and ``DollyDataModule``; hands the tokenizer to the data."""

    def __init__(self, args: Optional[list[str]] = None, run: bool = True, **kwargs) -> None:
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # Lightning-internal deprecation
        warnings.filterwarnings("ignore", ".*'set_vital' is deprecated.*")  # torchdata-internal deprecation
        warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")  # main() passes argv on
        super().__init__(
            DistillModule,
            DollyDataModule,
            args=with_base(list(sys.argv[1:] if args is None else args), run),
            run=run,
            seed_everything_default=1234,
            trainer_class=Trainer,
            trainer_defaults={"callbacks": default_callbacks(args)},
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

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule.connect(self.model.tokenizer)
        self.datamodule.load_split_records()  # bad data files fail here, before any trainer or model work
        self.check_checkpoint_student()
        self.check_teacher_cache()

    def check_teacher_cache(self) -> None:
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

    def check_checkpoint_student(self) -> None:
        """A ``--ckpt_path`` saved for another student is refused now, from its stored hyperparameters,
        before any weights load (``DistillModule.on_load_checkpoint`` checks the tensors themselves)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        path = config.get("ckpt_path")
        if not path or not os.path.isfile(path):
            return
        stored = checkpoint_hparams(read_checkpoint(path, mmap=True)).get("student")
        if stored is None:
            return
        stored = StudentConfig.architecture_of(stored)
        configured = self.model.student_config.architecture()
        differing = [k for k in configured if stored.get(k) != configured[k]]
        if differing:
            differences = ", ".join(f"{k}: {stored.get(k)!r} vs {configured[k]!r}" for k in differing)
            raise CheckpointError(
                f"{path} was saved from another student architecture than model.student ({differences})"
            )


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> LitKDCLI:
    """Run LightningCLI (``args`` as on the command line, e.g. ``["fit", "--config", ...]``)."""
    return LitKDCLI(args=args, run=run)


def lightning_command(name: str) -> Callable[[list[str]], Any]:
    """fit / validate / test / predict: LightningCLI itself, with the whole command line."""
    return lambda argv: cli_main([name, *argv])


def run_demo(argv: list[str]) -> Any:
    from lit_kd.cli.demo import main as demo

    return demo(argv)


def run_generate_data(argv: list[str]) -> Any:
    from lit_kd.cli.generate_data import main as generate_data

    return generate_data(argv)


def run_cache_teacher(argv: list[str]) -> Any:
    from lit_kd.cli.cache_teacher import main as cache_teacher

    return cache_teacher(argv)


# commands on a fit configuration: their options are LightningCLI's (`python -m lit_kd fit --help`)
CONFIG_COMMANDS: dict[str, tuple[Callable[[list[str]], Any], str]] = {
    "fit": (lightning_command("fit"), "Distill (or fine-tune) a student; LightningCLI's fit."),
    "validate": (lightning_command("validate"), "Validation losses and ROUGE-L of a checkpoint or config."),
    "test": (lightning_command("test"), "Test losses and ROUGE-L of a checkpoint or config."),
    "predict": (lightning_command("predict"), "LightningCLI's predict."),
    "demo": (run_demo, "The main job: distill SmolLM2-135M-Instruct on CPU, with a ROUGE-L table (configs/demo.yaml)."),
    "cache-teacher": (run_cache_teacher, "Run the teacher once over a fit config's data and store its hidden states."),
    "generate-data": (
        run_generate_data,
        "The teacher's sampled responses to a fit config's prompts (sequence-level KD).",
    ),
}


def function_commands() -> dict[str, Callable[..., Any]]:
    """Commands of their own: typed functions whose options come from their signatures and docstrings."""
    from lit_kd.cli.evaluate import evaluate
    from lit_kd.cli.export import export
    from lit_kd.cli.objectives import objectives
    from lit_kd.cli.report import report
    from lit_kd.cli.sweep import sweep

    return {"evaluate": evaluate, "export": export, "sweep": sweep, "report": report, "objectives": objectives}


POSITIONAL = {"report"}  # `python -m lit_kd report <sweep dir>`


def first_line(text: Optional[str]) -> str:
    return (text or "").strip().split("\n")[0]


def root_parser() -> ArgumentParser:
    """The one parser: every command a subcommand, with its one-line help."""
    parser = ArgumentParser(
        prog="python -m lit_kd",
        description="Knowledge distillation of causal LMs with τ as a searchable knob.",
        exit_on_error=False,
    )
    commands = parser.add_subcommands(required=True, dest="command")
    for name, (_, help_text) in CONFIG_COMMANDS.items():
        placeholder = ArgumentParser(description=f"{help_text} Options: python -m lit_kd {name} --help")
        commands.add_subcommand(name, placeholder, help=help_text)
    for name, function in function_commands().items():
        summary = (inspect.getdoc(function) or "").split("\n\nArgs:")[0]  # the options document themselves
        command = ArgumentParser(description=summary, exit_on_error=False)
        command.add_argument("--config", action=ActionConfigFile, help="A YAML file with this command's options.")
        command.add_function_arguments(function, as_positional=name in POSITIONAL)
        commands.add_subcommand(name, command, help=first_line(function.__doc__))
    return parser


def run_function_command(argv: list[str]) -> Any:
    parser = root_parser()
    config = parser.parse_args(argv)
    name = config.command
    options = parser.instantiate_classes(config)[name]
    options = {k: v for k, v in dict(options).items() if k != "config"}
    return function_commands()[name](**options)


def main(args: Optional[list[str]] = None) -> None:
    """Dispatch to the command. Bad input (a ``LitKDError`` or a config that does not parse) ends in one line,
    ``lit_kd: error: ...``, and exit status 2; ``LIT_KD_DEBUG=1`` shows the traceback instead."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        check_config_files(argv)
        if argv and argv[0] in CONFIG_COMMANDS:
            CONFIG_COMMANDS[argv[0]][0](argv[1:])
        else:
            run_function_command(argv)
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
