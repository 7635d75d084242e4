"""The sweep's records on disk, as typed dataclasses: what a finished fit leaves (``fit_summary.json``), where a
run stands (``<run>/status.json``) and the sweep's plan (``sweep.json``).

Each file carries the number of its layout (``"format": N``); a file without one is format 1, the layout lit_kd
wrote before the number existed. ``read`` converts an older format whose layout maps exactly onto the current one,
and refuses a newer format, a file that is not JSON, or a missing or unknown field with a ``ConfigError`` that
names the file and what to do. ``write`` replaces the file atomically. Pure data: no Lightning, no torch.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

from lit_kd.errors import ConfigError
from lit_kd.eval.diversity import check_self_bleu_order
from lit_kd.utils.fields import check_field_types
from lit_kd.utils.io import atomic_write_text

FIT_SUMMARY_FILE = "fit_summary.json"
STATUS_FILE = "status.json"
PLAN_FILE = "sweep.json"
FORMAT_KEY = "format"

TEACHER_DATA = "teacher_data"
PREREQUISITES = {
    TEACHER_DATA: "the teacher's responses to the training prompts (generate-data), which the regime's runs train on"
}
"""What a regime can need before its first run (``requires`` in ``configs/regimes/<regime>.sweep.json``)."""
STEP_CHECKPOINT = "step-{step}.ckpt"
"""The weights at global step ``step`` (``lit_kd.training.StepCheckpoints``), beside the run's other checkpoints."""

T = TypeVar("T")
R = TypeVar("R", bound="JsonRecord")


def check_steps(steps: Any, option: str) -> list[int]:
    """``steps`` as positive, strictly increasing whole numbers of optimizer steps; a ``ConfigError`` naming
    ``option`` otherwise."""
    if not isinstance(steps, (list, tuple)):
        raise ConfigError(f"{option} must be a list of optimizer steps, got {steps!r}")
    for step in steps:
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"{option} must hold positive whole numbers of optimizer steps, got {step!r}")
    if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
        raise ConfigError(f"{option} must be strictly increasing, got {list(steps)}")
    return list(steps)


def step_checkpoint_path(checkpoint_dir: str | os.PathLike, step: int) -> Path:
    """Where ``StepCheckpoints`` writes the weights at global step ``step``."""
    return Path(checkpoint_dir) / STEP_CHECKPOINT.format(step=step)


def _from_fields(cls: type[T], data: Any, where: str) -> T:
    """``cls(**data)`` for a JSON object whose keys are ``cls``'s fields (those with defaults may be absent);
    ``ValueError`` naming ``where`` otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a JSON object")
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    unknown = [key for key in data if key not in names]
    missing = [name for name in required if name not in data]
    if unknown or missing:
        problems = [f"unknown key(s) {', '.join(unknown)}"] if unknown else []
        problems += [f"missing key(s) {', '.join(missing)}"] if missing else []
        raise ValueError(f"{where}: {'; '.join(problems)}")
    return cls(**data)


def _read_json(path: Path, what: str, remedy: str, current: int) -> tuple[dict[str, Any], int]:
    """The JSON object in ``path`` without its format number, and that number (1 when absent). Not JSON, not an
    object, or a format newer than ``current``: a ``ConfigError`` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no {what} there") from None
    except ValueError as err:  # JSON or UTF-8 decoding
        raise ConfigError(f"{path} is not a valid {what} (not JSON: {err}); {remedy}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a valid {what} (not a JSON object); {remedy}")
    version = data.pop(FORMAT_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{path} is not a valid {what} (format {version!r} is not a number >= 1); {remedy}")
    if version > current:
        raise ConfigError(
            f"{path} is a {what} of format {version}, newer than this lit_kd reads (format {current}); "
            "read it with the lit_kd version that wrote it, or upgrade lit_kd"
        )
    return data, version


class JsonRecord(ABC):
    """A record written as one JSON object with its format number; subclasses give ``FORMAT``, ``WHAT`` (the
    record's name in errors), ``REMEDY`` (what to do with a bad file), ``to_dict`` and ``from_dict``."""

    FORMAT: ClassVar[int]
    WHAT: ClassVar[str]
    REMEDY: ClassVar[str]

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The file's content, without the format number."""

    @classmethod
    @abstractmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """The record from a file's content in the current layout; ``ValueError`` or ``TypeError`` if malformed."""

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """The content of an older format in the current layout (a file without a format number was written
        before the number existed: format 1)."""
        return data

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps({FORMAT_KEY: self.FORMAT, **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def read(cls: type[R], path: str | os.PathLike) -> R:
        data, version = _read_json(Path(path), cls.WHAT, cls.REMEDY, cls.FORMAT)
        try:
            return cls.from_dict(cls.upgrade(data, version))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{path} is not a valid {cls.WHAT} ({err}); {cls.REMEDY}") from None


@dataclass
class FitSummary(JsonRecord):
    """What a finished fit leaves in its log directory (``fit_summary.json``): the best checkpoint with its score
    and monitor, the last checkpoint, the step and epoch counts, and the final metrics."""

    FORMAT: ClassVar[int] = 1
    WHAT: ClassVar[str] = "fit summary"
    REMEDY: ClassVar[str] = "delete it to fit that run again"

    global_step: int
    epochs: int
    best_model_path: Optional[str]
    best_model_score: Optional[float]
    monitor: Optional[str]
    last_model_path: Optional[str]
    metrics: dict[str, float]

    @property
    def checkpoint(self) -> Optional[str]:
        """The checkpoint to evaluate: the best one, else the last one."""
        return self.best_model_path or self.last_model_path

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the summary") -> "FitSummary":
        return _from_fields(cls, data, where)


@dataclass
class SweepEval:
    """How each run's best checkpoint is evaluated (and, with ``steps``, its weights at those optimizer steps)."""

    benchmarks: list[str] = field(default_factory=lambda: ["dolly", "self_inst", "vicuna", "sinst", "uinst"])
    """Benchmark names under ``data_dir``, or ``name=FILE_OR_HUB``."""
    data_dir: str = "../shared/data/minillm"
    seeds: Optional[list[int]] = None
    """Sampling seeds per run; ``null`` = the run's own training seed."""
    max_examples: Optional[int] = None
    max_new_tokens: int = 256
    batch_size: int = 32
    self_bleu_order: int = 4
    """The n-gram order of Self-BLEU (``evaluate --self_bleu_order``)."""
    steps: list[int] = field(default_factory=list)
    """Learning curves: global optimizer steps at which each run's weights are saved during its fit and evaluated
    after it (``<run>/eval-step-<N>``), before the usual evaluation; empty: the best checkpoint only."""

    def __post_init__(self) -> None:
        """What would fail each run's evaluation after its training, refused when the sweep is planned."""
        check_field_types(self, "--evaluation")
        check_steps(self.steps, "--evaluation.steps")
        if not self.benchmarks:
            raise ConfigError("--evaluation.benchmarks needs at least one benchmark")
        if self.seeds is not None and not self.seeds:
            raise ConfigError("--evaluation.seeds needs at least one seed (or null: each run's training seed)")
        for name in ("max_examples", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--evaluation.{name} must be >= 1, got {value}")
        check_self_bleu_order(self.self_bleu_order, "--evaluation.self_bleu_order")


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its place in the plan, objective, τ, training seed and regime."""

    index: int
    objective: str
    tau: float
    seed: int
    regime: Optional[str] = None
    """A training regime of ``configs/regimes`` (off_policy, seqkd, mixed, on_policy); None: the base's own."""

    @property
    def run_id(self) -> str:
        run = f"{self.objective}/tau_{self.tau:g}/seed_{self.seed}"
        return run if self.regime is None else f"{self.regime}/{run}"

    @property
    def label(self) -> str:
        """How the report names the run's objective (with its regime when the sweep has several)."""
        return self.objective if self.regime is None else f"{self.objective} [{self.regime}]"


@dataclass
class StepEval:
    """One evaluation point of a run's learning curve: the weights at global step ``step``, evaluated into
    ``eval_dir``; ``eval_dir`` None: the fit ended before that step (not reached)."""

    step: int
    eval_dir: Optional[str] = None

    @property
    def reached(self) -> bool:
        return self.eval_dir is not None


RUN_STATE_FIELDS = {
    "running": ("started",),
    "done": ("fit_dir", "checkpoint", "fit_summary", "eval_dir", "minutes", "step_evals"),
    "failed": ("stage", "returncode", "log", "log_tail"),
    "busy": ("reason",),
}
"""Each state of a run and the fields it sets (``busy`` is never written: another process is running the run)."""


@dataclass
class RunStatus(JsonRecord):
    """Where one run stands (``<run>/status.json``): running → done | failed; the fields of its state are set
    (``RUN_STATE_FIELDS``), the others are None and left out of the file. A running or failed run whose fit
    finished keeps ``fit_dir`` and the step evaluations done so far (``step_evals``), so a restart does only the
    missing ones. Format 2 added ``step_evals``; format 1 (unversioned) statuses are converted."""

    FORMAT: ClassVar[int] = 2
    WHAT: ClassVar[str] = "run status"
    REMEDY: ClassVar[str] = "delete it to start that run again"

    state: str
    spec: RunSpec
    started: Optional[str] = None
    """running: when the attempt started"""
    stage: Optional[str] = None
    """failed: the step that failed (fit, fit (no checkpoint), evaluate)"""
    returncode: Optional[int] = None
    log: Optional[str] = None
    log_tail: Optional[list[str]] = None
    fit_dir: Optional[str] = None
    """done: the fit attempt whose checkpoint was evaluated"""
    checkpoint: Optional[str] = None
    fit_summary: Optional[FitSummary] = None
    eval_dir: Optional[str] = None
    minutes: Optional[float] = None
    step_evals: Optional[list[StepEval]] = None
    """done (running, failed: so far): the evaluations of ``evaluation.steps``, in step order"""
    reason: Optional[str] = None
    """busy: the lock's owner"""

    def __post_init__(self) -> None:
        if self.state not in RUN_STATE_FIELDS:
            raise ValueError(f"state must be one of {', '.join(RUN_STATE_FIELDS)}, got {self.state!r}")
        missing = [name for name in RUN_STATE_FIELDS[self.state] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.state} run status needs {', '.join(missing)}")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        data["spec"] = asdict(self.spec)
        if self.fit_summary is not None:
            data["fit_summary"] = self.fit_summary.to_dict()
        if self.step_evals is not None:
            data["step_evals"] = [asdict(point) for point in self.step_evals]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "RunStatus":
        if not isinstance(data, dict):
            raise ValueError("the status is not a JSON object")
        data = dict(data)
        if "spec" in data:
            data["spec"] = _from_fields(RunSpec, data["spec"], "its spec")
        if data.get("fit_summary") is not None:
            data["fit_summary"] = FitSummary.from_dict(data["fit_summary"], "its fit_summary")
        if data.get("step_evals") is not None:
            if not isinstance(data["step_evals"], list):
                raise ValueError("step_evals is not a list")
            points = enumerate(data["step_evals"])
            data["step_evals"] = [_from_fields(StepEval, point, f"step_evals[{i}]") for i, point in points]
        return _from_fields(cls, data, "the status")

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Format 1 (no format number) in format 2's layout: a done run of that time evaluated its best checkpoint
        only (no step evaluations)."""
        if version == 1 and data.get("state") == "done":
            data = {"step_evals": [], **data}
        return data

    def evaluated_step(self, step: int) -> Optional[StepEval]:
        """The recorded evaluation of global step ``step`` (reached or not), if any."""
        return next((point for point in self.step_evals or [] if point.step == step), None)


@dataclass
class ConfigLayer:
    """A config file layered on some runs, with its content's sha256 when the sweep was planned."""

    path: str
    sha256: str


@dataclass
class RegimeLayer(ConfigLayer):
    """A regime's config file, and what the sweep prepares before the regime's first run (``PREREQUISITES``)."""

    requires: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [name for name in self.requires if name not in PREREQUISITES]
        if unknown:
            raise ValueError(f"unknown prerequisite(s) {', '.join(unknown)}; known: {', '.join(PREREQUISITES)}")


@dataclass
class SweepPlan(JsonRecord):
    """A sweep's plan (``sweep.json``): the base configs, the grid's runs, the evaluation settings, and what is
    layered on the runs. Format 2 added each regime's ``requires``, format 3 the evaluation's ``steps``; older plans
    are converted (format 1 is unversioned)."""

    FORMAT: ClassVar[int] = 3
    WHAT: ClassVar[str] = "sweep plan"
    REMEDY: ClassVar[str] = "restore it from a backup or start a new sweep in another directory"

    base: list[str]
    runs: list[RunSpec]
    evaluation: SweepEval
    fit_args: list[str] = field(default_factory=list)
    """Extra command-line overrides of every fit (and of the builds run on the base configs)."""
    objective_configs: dict[str, ConfigLayer] = field(default_factory=dict)
    """``<objective>.yaml`` of the objective folder, layered on that objective's runs."""
    teacher_cache: Optional[str] = None
    """A teacher cache directory built once (``cache-teacher``) before the first run and read by every run."""
    regime_configs: dict[str, RegimeLayer] = field(default_factory=dict)
    """``configs/regimes/<regime>.yaml`` for each regime of the grid, with its prerequisites."""
    seqkd_args: list[str] = field(default_factory=list)
    """Extra arguments of ``generate-data`` when a regime requires the teacher's data."""

    def __post_init__(self) -> None:
        unplanned = sorted({run.regime for run in self.runs if run.regime is not None} - set(self.regime_configs))
        if unplanned:
            raise ValueError(f"regime_configs lacks the runs' regime(s) {', '.join(unplanned)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "runs": [asdict(run) for run in self.runs],
            "eval": asdict(self.evaluation),
            "fit_args": self.fit_args,
            "objective_configs": {name: asdict(layer) for name, layer in self.objective_configs.items()},
            "teacher_cache": self.teacher_cache,
            "regime_configs": {name: asdict(layer) for name, layer in self.regime_configs.items()},
            "seqkd_args": self.seqkd_args,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "SweepPlan":
        if not isinstance(data, dict):
            raise ValueError("the plan is not a JSON object")
        missing = [key for key in ("base", "runs", "eval") if key not in data]
        if missing:
            raise ValueError(f"the plan: missing key(s) {', '.join(missing)}")
        data = dict(data)
        data["evaluation"] = _from_fields(SweepEval, data.pop("eval"), "its eval")
        if not isinstance(data["runs"], list):
            raise ValueError("runs is not a list")
        data["runs"] = [_from_fields(RunSpec, run, f"runs[{i}]") for i, run in enumerate(data["runs"])]
        for key, layer_class in (("objective_configs", ConfigLayer), ("regime_configs", RegimeLayer)):
            layers = data.get(key, {})
            if not isinstance(layers, dict):
                raise ValueError(f"{key} is not a JSON object")
            data[key] = {name: _from_fields(layer_class, layer, f"{key}.{name}") for name, layer in layers.items()}
        return _from_fields(cls, data, "the plan")

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Format 1 (no format number) in format 2's layout: keys added since then take the values the code of
        that time used when they were absent, and the regime named seqkd (the one regime then that needed anything
        prepared) requires the teacher's data. Format 2 reads as it is: its evaluation has no ``steps`` (none)."""
        if version == 1:
            data = {"teacher_cache": None, "regime_configs": {}, "seqkd_args": [], **data}
            layers = data["regime_configs"]
            if isinstance(layers, dict):
                for name, layer in layers.items():
                    if isinstance(layer, dict):
                        layer["requires"] = [TEACHER_DATA] if name == "seqkd" else []
        return data
