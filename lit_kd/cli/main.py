"""``python -m lit_kd``: one entry, every command a subcommand (``python -m lit_kd --help`` lists them).

    python -m lit_kd fit --config configs/tiny.yaml --model.loss.name rkl --model.loss.tau 2.5
    python -m lit_kd validate --config configs/tiny.yaml --ckpt_path logs/tiny/version_0/checkpoints/last.ckpt
    python -m lit_kd demo            # the embedded default: distill SmolLM2-135M-Instruct on CPU
    python -m lit_kd sweep --help    # every option, from the function's type hints and docstring

``COMMANDS`` is the one table of commands: it drives ``--help``, the dispatch and the generated commands reference
(docs/reference/commands.md, rendered by docs/hooks.py). Commands on a fit configuration take the options of
``lit_kd.training.build`` (LightningCLI: ``--config``, ``--model.*``, ``--data.*``, ``--trainer.*``); the others are
typed functions whose options come from their signatures and docstrings (one jsonargparse parser). This package only
parses and dispatches: the work is done elsewhere.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lit_kd.cli import cache_teacher, demo, generate_data
from lit_kd.cli.evaluate import evaluate
from lit_kd.cli.export import export
from lit_kd.cli.objectives import objectives
from lit_kd.cli.report import report
from lit_kd.cli.sweep import sweep
from lit_kd.cli.train_tokenizer import train_tokenizer
from lit_kd.errors import LitKDError
from lit_kd.training import build
from lit_kd.utils.io import is_out_of_space, out_of_space_error
from lit_kd.utils.yaml_files import check_config_files


@dataclass(frozen=True)
class Command:
    """A subcommand: ``run`` takes the words after its name (``config`` commands) or the parsed options
    (functions); ``help`` is its line in ``python -m lit_kd --help``."""

    run: Callable[..., Any]
    help: str
    on_fit_config: bool = False
    positional: bool = False
    """A function command whose arguments are positional (``report <sweep dir>``)."""


def run_subcommand(name: str) -> Callable[[list[str]], Any]:
    """fit / validate / test: the builder runs the LightningCLI subcommand."""
    return lambda argv: build(argv, subcommand=name)


def first_line(function: Callable[..., Any]) -> str:
    return (function.__doc__ or "").strip().split("\n")[0]


COMMANDS: dict[str, Command] = {
    "fit": Command(run_subcommand("fit"), "Distill (or fine-tune) a student; LightningCLI's fit.", True),
    "validate": Command(run_subcommand("validate"), "Validation losses and ROUGE-L of a checkpoint or config.", True),
    "test": Command(run_subcommand("test"), "Test losses and ROUGE-L of a checkpoint or config.", True),
    "demo": Command(
        demo.main, "The main job: distill SmolLM2-135M-Instruct on CPU, with a ROUGE-L table (configs/demo.yaml).", True
    ),
    "cache-teacher": Command(
        cache_teacher.main, "Run the teacher once over a fit config's data and store its hidden states.", True
    ),
    "generate-data": Command(
        generate_data.main, "The teacher's sampled responses to a fit config's prompts (sequence-level KD).", True
    ),
    "evaluate": Command(evaluate, first_line(evaluate)),
    "export": Command(export, first_line(export)),
    "sweep": Command(sweep, first_line(sweep)),
    "report": Command(report, first_line(report), positional=True),
    "objectives": Command(objectives, first_line(objectives)),
    "train-tokenizer": Command(train_tokenizer, first_line(train_tokenizer)),
}


def root_parser() -> ArgumentParser:
    """The one parser: every command a subcommand, with its one-line help."""
    parser = ArgumentParser(
        prog="python -m lit_kd",
        description="Knowledge distillation of causal LMs with τ as a searchable knob.",
        exit_on_error=False,
    )
    subcommands = parser.add_subcommands(required=True, dest="command")
    for name, command in COMMANDS.items():
        if command.on_fit_config:  # its options are the builder's: `python -m lit_kd <name> --help`
            listed = ArgumentParser(description=f"{command.help} Options: python -m lit_kd {name} --help")
        else:
            summary = (inspect.getdoc(command.run) or "").split("\n\nArgs:")[0]  # the options document themselves
            listed = ArgumentParser(description=summary, exit_on_error=False)
            listed.add_argument("--config", action=ActionConfigFile, help="A YAML file with this command's options.")
            listed.add_function_arguments(command.run, as_positional=command.positional)
        subcommands.add_subcommand(name, listed, help=command.help)
    return parser


def run_function_command(argv: list[str]) -> Any:
    parser = root_parser()
    config = parser.parse_args(argv)
    name = config.command
    options = parser.instantiate_classes(config)[name]
    options = {k: v for k, v in dict(options).items() if k != "config"}
    return COMMANDS[name].run(**options)


USER_ERRORS = (LitKDError, argparse.ArgumentError, MisconfigurationException)
"""Bad input: lit_kd's own errors, a parse error, a setting Lightning refuses."""


def user_error(raised: BaseException) -> Optional[BaseException]:
    """The bad input behind ``raised``, or None for a defect of lit_kd's own (which keeps its traceback): a
    ``LitKDError``, a parse error or Lightning's ``MisconfigurationException`` (a setting it refuses), also where
    jsonargparse wraps one while it builds a class (a dataclass's check inside an ``Optional[...]``, whose union
    error names every subtype it tried, is raised ``from`` the first subtype's error); a full disk met by any
    writer."""
    seen: Optional[BaseException] = raised
    while seen is not None:
        if isinstance(seen, USER_ERRORS):
            return seen
        seen = seen.__cause__
    if isinstance(raised, (OSError, RuntimeError)) and is_out_of_space(raised):
        return raised
    return None


def main(args: Optional[list[str]] = None) -> None:
    """Dispatch to the command. Bad input (a ``LitKDError`` or a config that does not parse) ends in one line,
    ``lit_kd: error: ...``, and exit status 2; ``LIT_KD_DEBUG=1`` shows the traceback instead."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        check_config_files(argv)
        command = COMMANDS.get(argv[0]) if argv else None
        if command is not None and command.on_fit_config:
            command.run(argv[1:])
        else:
            run_function_command(argv)
    except Exception as raised:
        err = user_error(raised)
        if err is None or os.environ.get("LIT_KD_DEBUG"):
            raise
        if not isinstance(err, USER_ERRORS):
            # a full disk met by a writer that is not lit_kd's own (a logger, the config saver, the Arrow cache)
            where = getattr(err, "filename", None)
            err = out_of_space_error(where) if where else "no space left on the device; free some space and run again"
        print(f"lit_kd: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
