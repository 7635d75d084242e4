"""Every option of the fit parser, given values a user could mistype: the run either builds and starts, or exits 2
with one ``lit_kd: error:`` line naming the option, without a traceback and without writing under its save
directory. The options are read from the parser itself (the tiny config resolved, plus the fields of every
``Optional[...]`` dataclass it leaves null), so a new option is covered the day it is added.

The default run gives every fourth option one value (the value list rotated over the options); the ``slow`` run gives
every option every value. Both build each run in full (data, module, trainer, callbacks: everything before the
models load) with ``Trainer.fit`` replaced by a recorder; a sample of the valid ones then trains for real, two
steps. Each prints how many options and values it tried."""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from pathlib import Path
from typing import Optional

import pytest

from lit_kd.cli import main
from lit_kd.modules import DistillModule
from lit_kd.training import Trainer, build
from lit_kd.utils.options import dataclass_of, option_dataclass

VALUES = ["abc", "-1", "0", "2.5", ".nan", ".inf", "null", "", "[]", "/no/such/path"]
"""What a user could mistype: the wrong type, negative, zero, a fraction, NaN and inf, null, empty, an empty list,
a missing path (an unknown name where a choice is: ``abc``)."""

SKIPPED = {
    "config": "the --config action reads files (tests/cli/test_cli.py checks a missing one)",
    "trainer.logger.init_args.save_dir": "the test's own save directory",
    "data.cache_dir": "the test's own cache",
}
"""Options whose value the harness itself sets."""


def tiny_args(tmp_path: Path) -> list[str]:
    """The tiny config, its logs under ``tmp_path`` and its tokenized data cached beside it (shared by the cases)."""
    from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER

    return ["--config", str(ROOT / "configs" / "tiny.yaml"), "--model.teacher.tokenizer", str(TINY_TOKENIZER),
            "--data.raw", str(DEMO_DATA), "--data.cache_dir", str(tmp_path.parent / "cache"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]  # fmt: skip


def optional_dataclass(key: str) -> Optional[type]:
    """The dataclass type of a ``model.*`` option (through ``Optional[...]`` and nested dataclasses), or None."""
    parts = key.split(".")
    return option_dataclass(DistillModule.__init__, parts[1:]) if parts[0] == "model" else None


def fit_options(tmp_path: Path) -> list[str]:
    """Every leaf option of the fit parser under the tiny config, and the fields of each null dataclass option."""
    config = build(tiny_args(tmp_path)).config
    keys: list[str] = []
    for key in config.keys():
        value = config.get(key)
        cls = optional_dataclass(key) if value is None else None
        keys += _fields(key, cls) if cls is not None else [key]
    return [k for k in keys if k not in SKIPPED]


def _fields(prefix: str, cls: type) -> list[str]:
    keys = []
    for field in dataclasses.fields(cls):
        nested = dataclass_of(typing.get_type_hints(cls)[field.name])
        keys += _fields(f"{prefix}.{field.name}", nested) if nested else [f"{prefix}.{field.name}"]
    return keys


class Started(Exception):
    """Raised instead of training: the run was built and ``fit`` called."""


def attempt(tmp_path: Path, key: str, value: str, capsys, train: bool = False) -> tuple[str, Optional[str]]:
    """``python -m lit_kd fit`` on the tiny config with ``--key value``: ("started" or "refused", None), or
    ("defect", what is wrong with the refusal: not exit 2, not one line naming the option, a traceback, files
    written under the save directory)."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    two_steps = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1"]
    args = ["fit", *tiny_args(tmp_path), *(two_steps if train else []), f"--{key}={value}"]
    outcome, problem = outcome_of(args, tmp_path, capsys, lambda line: names_option(line, key), {logs})
    return ("started" if outcome == "ran" else outcome), problem


def outcome_of(
    words: list[str], folder: Path, capsys, names: typing.Callable[[str], bool], kept: set[Path]
) -> tuple[str, Optional[str]]:
    """``python -m lit_kd <words>`` run in ``folder`` (a relative path given as a value lands there): ("ran", None)
    when it runs (or reaches ``fit``); ("refused", None) for exit 2 with one ``lit_kd: error:`` line that ``names``
    accepts, no traceback, and nothing written in ``folder`` (an empty ``kept`` folder aside); else ("defect",
    what is wrong)."""
    capsys.readouterr()
    try:
        with contextlib.chdir(folder):
            main(words)
        return "ran", None
    except Started:
        return "ran", None
    except SystemExit as exit_info:
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.startswith("lit_kd: error:")]
        if exit_info.code != 2 or len(lines) != 1 or "Traceback" in err:
            return "defect", f"exit {exit_info.code}: {err.strip()[-600:]}"
        if not names(lines[0]):
            return "defect", f"the error does not name the option: {lines[0]}"
        written = [p for p in folder.rglob("*") if p not in kept]
        if written:
            return "defect", f"refused after writing {sorted(map(str, written))[:3]}"
        return "refused", None
    except Exception as err:  # noqa: BLE001 - a traceback is what the test looks for
        return "defect", f"{type(err).__name__}: {str(err)[:600]}"


def names_option(line: str, key: str) -> bool:
    """The error names the option: its key, its last name, or the option group it belongs to (``model.optimizer``
    for its ``class_path``, ``model.cross_tokenizer`` for a field of a group this config cannot turn on)."""
    parts = key.split(".")
    named = [key, parts[-1]] + [".".join(parts[:n]) for n in range(2, len(parts))]
    return any(name in line for name in named)


FULL_STARTS = {"train": False}
"""Set while a sampled valid case trains for real (``Trainer.fit`` runs instead of the recorder)."""


@pytest.fixture
def no_training(monkeypatch):
    real_fit = Trainer.fit

    def fit(self, *args, **kwargs):
        if not FULL_STARTS["train"]:
            raise Started
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit)


def run_cases(tmp_path, capsys, cases, full_starts: int) -> dict[str, list]:
    """Each case built (``fit`` recorded, not run); then ``full_starts`` of the valid ones, spread over them,
    trained for two steps: each must end without an error."""
    outcomes: dict[str, list] = {"started": [], "refused": [], "defect": [], "trained": []}
    for number, (key, value) in enumerate(cases):
        case_dir = tmp_path / f"case{number}"
        case_dir.mkdir()
        outcome, problem = attempt(case_dir, key, value, capsys)
        outcomes[outcome].append((key, value, problem) if problem else (key, value))
    valid = outcomes["started"]
    FULL_STARTS["train"] = True
    try:
        for number, (key, value) in enumerate(valid[:: max(1, len(valid) // full_starts)][:full_starts]):
            case_dir = tmp_path / f"trained{number}"
            case_dir.mkdir()
            outcome, problem = attempt(case_dir, key, value, capsys, train=True)
            if outcome != "started":
                outcomes["defect"].append((key, value, f"valid when built, but training it: {outcome} {problem}"))
            outcomes["trained"].append((key, value))
    finally:
        FULL_STARTS["train"] = False
    return outcomes


def report(options: list[str], outcomes: dict[str, list]) -> None:
    tried = len(outcomes["started"]) + len(outcomes["refused"]) + len(outcomes["defect"])
    print(f"\n{len(options)} options, {tried} values tried: {len(outcomes['started'])} valid (the run is built and "
          f"starts; {len(outcomes['trained'])} of them trained two steps), {len(outcomes['refused'])} refused with one "
          f"line, {len(outcomes['defect'])} defects")  # fmt: skip
    for key, value, problem in outcomes["defect"]:
        print(f"  --{key}={value!r}: {problem}")


def test_a_sample_of_options_given_mistyped_values_starts_or_is_one_line(tmp_path, capsys, no_training):
    """Every fourth option of the parser, the values rotated over them (the slow test below tries them all)."""
    options = fit_options(tmp_path)
    assert len(options) > 150 and "model.policy.student_fraction" in options and "model.student.peft.r" in options
    cases = [(key, VALUES[number % len(VALUES)]) for number, key in enumerate(options)][::4]
    outcomes = run_cases(tmp_path, capsys, cases, full_starts=2)
    with capsys.disabled():
        report(options, outcomes)
    assert not outcomes["defect"], "\n".join(f"--{k}={v!r}: {p}" for k, v, p in outcomes["defect"])
    assert outcomes["refused"] and outcomes["started"]


@pytest.mark.slow
def test_every_option_given_every_mistyped_value_starts_or_is_one_line(tmp_path, capsys, no_training):
    options = fit_options(tmp_path)
    outcomes = run_cases(tmp_path, capsys, [(key, value) for key in options for value in VALUES], full_starts=20)
    with capsys.disabled():
        report(options, outcomes)
    assert not outcomes["defect"], "\n".join(f"--{k}={v!r}: {p}" for k, v, p in outcomes["defect"])


# --- the typed commands: options from their signatures (and the dataclasses they take), a valid base each ---


def command_options(name: str) -> list[str]:
    """The options of a typed command, as its parser builds them from the function's signature (a dataclass
    parameter, ``generation: SamplingConfig``, gives one option per field); of a fit-config command, its own options
    (the fit parser's are the tests above)."""
    import inspect

    from lightning.pytorch.cli import LightningArgumentParser

    from lit_kd.cli.cache_teacher import cache_options
    from lit_kd.cli.generate_data import generation_options
    from lit_kd.cli.main import COMMANDS

    own = {"cache-teacher": cache_options, "generate-data": generation_options}
    if name in own:
        parser = LightningArgumentParser()
        own[name](parser)
        return list(parser.get_defaults().keys())
    run = COMMANDS[name].run
    hints = typing.get_type_hints(run)
    options = []
    for parameter in inspect.signature(run).parameters.values():
        cls = dataclass_of(hints.get(parameter.name))
        options += _fields(parameter.name, cls) if cls is not None else [parameter.name]
    return options


def command_bases(tmp_path: Path, checkpoint: Path) -> dict[str, dict[str, str]]:
    """A valid, quick invocation of each typed command (its required options and small settings), which each
    case then changes one option of (``report``'s is a folder that is not a sweep: its one option, ``variants``,
    is refused with that)."""
    from tests.conftest import DEMO_DATA, ROOT, SHARED_DATA

    data = str(SHARED_DATA / "minillm") if (SHARED_DATA / "minillm").is_dir() else str(tmp_path / "no-shared-data")
    sweep_eval = "{benchmarks: [dolly], max_examples: 2, max_new_tokens: 4}"
    return {
        "evaluate": {"ckpt": str(checkpoint), "benchmarks": "[dolly]", "seeds": "[10]",
                     "data_dir": data, "max_examples": "2", "generation.max_new_tokens": "4",
                     "out_dir": str(tmp_path / "eval"), "calibration": "false"},  # fmt: skip
        "sweep": {"base": f"[{ROOT / 'configs' / 'tiny.yaml'}]", "objectives": "[fkl]", "taus": "[2.0]",
                  "seeds": "[10]", "out": str(tmp_path / "sweep"), "launcher": "slurm",
                  "evaluation": sweep_eval},  # fmt: skip
        "train-tokenizer": {"data": str(DEMO_DATA), "out": str(tmp_path / "tokenizer"), "vocab_size": "400",
                            "max_examples": "40"},  # fmt: skip
        "report": {"sweep_dir": str(tmp_path / "no-sweep")},
        "export": {"ckpt": str(checkpoint), "out": str(tmp_path / "export")},
        "cache-teacher": {"out": str(tmp_path / "teacher-cache"), "splits": "[val]"},
        "generate-data": {"out": str(tmp_path / "generated"), "splits": "[val]", "sampling.max_new_tokens": "4"},
    }


def attempt_command(
    tmp_path: Path, checkpoint: Path, name: str, key: str, value: str, capsys
) -> tuple[str, Optional[str]]:
    """``python -m lit_kd <name>`` from its base with ``--key value``: ("ran" or "refused", None), or ("defect",
    why: not exit 2, not one line naming the option, a traceback)."""
    from lit_kd.cli.main import COMMANDS

    options = {**command_bases(tmp_path, checkpoint)[name], key: value}
    if COMMANDS[name].positional:
        words = [options.pop("sweep_dir")] + [f"--{k}={v}" for k, v in options.items()]
    else:
        words = [f"--{k}={v}" for k, v in options.items()]
    if COMMANDS[name].on_fit_config:  # the tiny config (and its small data) first
        words = [*tiny_args(tmp_path), "--data.split_sizes", "[40, 8, 8]", *words]
    def names(line: str) -> bool:  # report's base is not a sweep: its one option is refused with that
        return name == "report" or names_option(line, key) or value in line

    return outcome_of([name, *words], tmp_path, capsys, names, set())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny run's checkpoint after one step (for evaluate and export)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    run = build([*tiny_args(folder / "run"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"], "fit")
    path = folder / "tiny.ckpt"
    run.trainer.save_checkpoint(path)
    return path


def run_command_cases(tmp_path, checkpoint, capsys, every: int) -> dict[str, list]:
    outcomes: dict[str, list] = {"ran": [], "refused": [], "defect": []}
    number = 0
    for name in command_bases(tmp_path, checkpoint):
        for key in command_options(name):
            for value in VALUES[number % every :: every]:
                case_dir = tmp_path / f"{name}{number}"
                case_dir.mkdir()
                outcome, problem = attempt_command(case_dir, checkpoint, name, key, value, capsys)
                outcomes[outcome].append((f"{name} --{key}", value, problem) if problem else (f"{name} --{key}", value))
                number += 1
    return outcomes


def report_commands(outcomes: dict[str, list]) -> None:
    tried = sum(len(v) for v in outcomes.values())
    print(f"\ntyped commands (evaluate, sweep, train-tokenizer, report, export; cache-teacher's and "
          f"generate-data's own options): {tried} values tried: "
          f"{len(outcomes['ran'])} ran, {len(outcomes['refused'])} refused with one line, "
          f"{len(outcomes['defect'])} defects")  # fmt: skip
    for key, value, problem in outcomes["defect"]:
        print(f"  {key}={value!r}: {problem}")


def test_each_typed_command_option_given_a_mistyped_value_runs_or_is_one_line(tmp_path, checkpoint, capsys):
    """Every option of evaluate, sweep, train-tokenizer, report and export, and the own options of cache-teacher
    and generate-data, one value each (the value list rotated over them); the slow test gives each every value."""
    outcomes = run_command_cases(tmp_path, checkpoint, capsys, every=len(VALUES))
    with capsys.disabled():
        report_commands(outcomes)
    assert not outcomes["defect"], "\n".join(f"{k}={v!r}: {p}" for k, v, p in outcomes["defect"])


@pytest.mark.slow
def test_every_typed_command_option_given_every_mistyped_value_runs_or_is_one_line(tmp_path, checkpoint, capsys):
    outcomes = run_command_cases(tmp_path, checkpoint, capsys, every=1)
    with capsys.disabled():
        report_commands(outcomes)
    assert not outcomes["defect"], "\n".join(f"{k}={v!r}: {p}" for k, v, p in outcomes["defect"])
