"""Planning a sweep: the objective × τ × seed (× regime) grid, the config layers and prerequisites of its runs,
each run's directory and per-run config, and the SLURM launcher. Nothing here runs a process (``sweep.py`` does).

Layout of a sweep directory::

    <out>/sweep.json                     the plan (``SweepPlan``: base configs, grid, evaluation settings)
    <out>/runs/<index>.yaml              the per-run config layered over the base configs
    <out>/launch_slurm.sh                a job-array script (``--launcher slurm``)
    <out>/teacher_cache/, teacher_cache.log   the teacher cache every run reads (``--teacher_cache auto``)
    <out>/seqkd_data/, seqkd_data.log    the teacher's responses, for regimes that require ``teacher_data``
    <out>/[<regime>/]<objective>/tau_<τ>/seed_<s>/
        fit/version_N/                   TensorBoard logs, checkpoints, fit_summary.json (one per attempt)
        eval[-k]/                        results.json, results.md, generations.jsonl
        eval-step-<N>[-k]/               the same, for the weights at step N (``evaluation.steps``: learning curves)
        fit.log, eval.log                the processes' output (appended per attempt)
        status.json                      running | done | failed (``RunStatus``), with what the report needs
                                         (its paths relative to the run directory: a sweep directory can be
                                         moved, and reported on from any working directory)

A regime is ``configs/regimes/<regime>.yaml``, layered on its runs as it is (it is an ordinary fit config, also
used by hand). What the sweep must prepare before the regime's first run is declared beside it, in
``<regime>.sweep.json`` (``{"requires": ["teacher_data"]}``), a file fit never reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from lit_kd.data.dolly import SPLITS
from lit_kd.data.generated import generated_split_paths
from lit_kd.errors import ConfigError
from lit_kd.eval.diversity import check_self_bleu_order
from lit_kd.experiments.records import (
    PLAN_FILE,
    PREREQUISITES,
    STATUS_FILE,
    ConfigLayer,
    RegimeLayer,
    RunSpec,
    RunStatus,
    SweepEval,
    SweepPlan,
)
from lit_kd.losses import check_tau, get_objective
from lit_kd.utils.io import atomic_write_text
from lit_kd.utils.paths import OBJECTIVE_CONFIGS, REGIME_CONFIGS
from lit_kd.utils.yaml_files import load_yaml_file

REGIME_SWEEP_SUFFIX = ".sweep.json"
"""``configs/regimes/<regime>.sweep.json``: what the sweep prepares before that regime's runs."""
TEACHER_DATA_DIR = "seqkd_data"
"""Where the sweep generates the teacher's data (``generate-data``) for regimes that require ``teacher_data``."""


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def plan_runs(
    objectives: list[str], taus: list[float], seeds: list[int], regimes: Optional[list[str]] = None
) -> list[RunSpec]:
    """The grid, regime by regime, then objective, τ and seed; repeated values are dropped."""
    try:
        for name in objectives:
            get_objective(name)
    except ConfigError as err:
        raise ConfigError(f"--objectives: {err}") from None
    try:
        for tau in taus:
            check_tau(tau)
    except ConfigError as err:
        raise ConfigError(f"--taus: {err}") from None
    for option, values in (("--objectives", objectives), ("--taus", taus), ("--seeds", seeds)):
        if not values:
            raise ConfigError(f"{option} is empty: a sweep needs at least one objective, one tau and one seed")
    objectives, taus, seeds = (list(dict.fromkeys(v)) for v in (objectives, [float(t) for t in taus], seeds))
    axis = list(dict.fromkeys(regimes)) if regimes else [None]
    grid = [(r, o, t, int(s)) for r in axis for o in objectives for t in taus for s in seeds]
    runs = [RunSpec(i, o, t, s, r) for i, (r, o, t, s) in enumerate(grid)]
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--taus {taus}: two values share a run directory name (tau_{{τ:g}}); use distinct values")
    return runs


def regime_layer(name: str) -> RegimeLayer:
    """``configs/regimes/<name>.yaml`` with its sha256, and the prerequisites its ``<name>.sweep.json`` declares
    (none without one)."""
    path = REGIME_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in REGIME_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"--regimes: unknown regime {name!r}; the regimes are {known}")
    sidecar = path.with_name(f"{name}{REGIME_SWEEP_SUFFIX}")
    requires = declared_prerequisites(sidecar) if sidecar.is_file() else []
    return RegimeLayer(str(path.resolve()), sha256(path), requires)


def declared_prerequisites(sidecar: Path) -> list[str]:
    """``requires`` of a regime's ``.sweep.json``: names from ``PREREQUISITES``."""
    try:
        declared = json.loads(sidecar.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(f"{sidecar} is not JSON ({err})") from None
    requires = declared.get("requires") if isinstance(declared, dict) and set(declared) == {"requires"} else None
    if not isinstance(requires, list) or not all(isinstance(n, str) and n in PREREQUISITES for n in requires):
        raise ConfigError(f'{sidecar}: expected {{"requires": [...]}} with names from {", ".join(PREREQUISITES)}')
    return requires


def make_plan(
    out: str | os.PathLike,
    base: list[str],
    objectives: list[str],
    taus: list[float],
    seeds: list[int],
    evaluation: SweepEval,
    fit_args: Optional[list[str]] = None,
    teacher_cache: Optional[str] = None,
    objective_configs: Optional[str] = None,
    regimes: Optional[list[str]] = None,
    seqkd_args: Optional[list[str]] = None,
) -> SweepPlan:
    """The plan of a new sweep into ``out``, every input checked; nothing is written."""
    check_self_bleu_order(evaluation.self_bleu_order, "--evaluation.self_bleu_order")  # not after every run's fit
    for path in base:
        load_yaml_file(path, "base config")  # missing or not YAML: an error naming the file, before any write
    runs = plan_runs(objectives, taus, seeds, regimes)
    regime_layers = {name: regime_layer(name) for name in dict.fromkeys(regimes or [])}
    folder = Path(objective_configs) if objective_configs is not None else OBJECTIVE_CONFIGS
    objective_layers = {
        name: ConfigLayer(str(path.resolve()), sha256(path))
        for name in dict.fromkeys(r.objective for r in runs)
        if (path := folder / f"{name}.yaml").is_file()
    }
    if teacher_cache == "auto":
        teacher_cache = str(Path(out) / "teacher_cache")
    return SweepPlan(
        base=[os.path.abspath(p) for p in base],
        runs=runs,
        evaluation=evaluation,
        fit_args=list(fit_args or []),
        objective_configs=objective_layers,
        teacher_cache=os.path.abspath(teacher_cache) if teacher_cache is not None else None,
        regime_configs=regime_layers,
        seqkd_args=list(seqkd_args or []),
    )


def check_layers(plan: SweepPlan) -> None:
    """Refuse a plan whose objective or regime files changed or vanished since it was made."""
    for name, layer in {**plan.objective_configs, **plan.regime_configs}.items():
        if not Path(layer.path).is_file() or sha256(Path(layer.path)) != layer.sha256:
            raise ConfigError(
                f"{layer.path} (the {name} runs' config) changed or vanished since the sweep was planned; "
                "restore it or start a new sweep"
            )


def load_plan(out: str | os.PathLike) -> SweepPlan:
    """The plan of the sweep directory ``out``, its layered files checked unchanged."""
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"{out} is not a sweep directory (no {PLAN_FILE})")
    plan = SweepPlan.read(path)
    check_layers(plan)
    return plan


def run_dir(out: Path, spec: RunSpec) -> Path:
    return Path(out) / spec.run_id


def read_status(out: Path, spec: RunSpec) -> Optional[RunStatus]:
    """The run's ``status.json``, its paths joined onto the run directory as it lies now (``write_status``); None
    before its first attempt."""
    path = run_dir(out, spec) / STATUS_FILE
    if not path.is_file():
        return None
    status = RunStatus.read(path)
    seen = status_run_dir(status)
    if seen is not None:  # paths relative to the run directory as they name it (``.``: as write_status stores them)
        status = with_paths(status, lambda p: _relative_to(p, seen))
    return with_paths(status, lambda p: str(path.parent / p))  # an absolute path stays as it is


def write_status(out: Path, status: RunStatus) -> RunStatus:
    """Write the run's ``status.json`` with its paths relative to the run directory (a path outside it absolute),
    so the sweep directory can be moved or reported on from any working directory; returns ``status``."""
    run = run_dir(out, status.spec)
    with_paths(status, lambda p: stored_path(p, run)).write(run / STATUS_FILE)
    return status


def with_paths(status: RunStatus, move: Callable[[str], str]) -> RunStatus:
    """A copy of ``status`` with every path it records (its own, its step evaluations' and its fit summary's)
    mapped by ``move``."""

    def moved(path: Optional[str]) -> Optional[str]:
        return None if path is None else move(path)

    summary = status.fit_summary
    if summary is not None:
        summary = replace(summary, best_model_path=moved(summary.best_model_path),
                          last_model_path=moved(summary.last_model_path))  # fmt: skip
    points = status.step_evals
    if points is not None:
        points = [replace(point, eval_dir=moved(point.eval_dir)) for point in points]
    return replace(status, fit_dir=moved(status.fit_dir), checkpoint=moved(status.checkpoint), log=moved(status.log),
                   eval_dir=moved(status.eval_dir), fit_summary=summary, step_evals=points)  # fmt: skip


def status_run_dir(status: RunStatus) -> Optional[str]:
    """The run directory as the status's paths name it: the sweep writes ``<run>/fit.log`` or ``<run>/eval.log``,
    ``<run>/eval[-k]``, ``<run>/eval-step-<N>`` and ``<run>/fit/version_N``. ``.`` for a status written by
    ``write_status`` (its paths relative to the run directory); the run directory as seen from where the sweep ran for
    one written before; None when the status records no path."""
    in_run = [status.log, status.eval_dir, *(point.eval_dir for point in status.step_evals or [])]
    in_run = [path for path in in_run if path is not None]  # each a file or directory right inside the run directory
    if in_run:
        seen = os.path.dirname(os.path.normpath(in_run[0]))
    elif status.fit_dir is not None:
        seen = os.path.dirname(os.path.dirname(os.path.normpath(status.fit_dir)))
    else:
        return None
    return seen or os.curdir


def stored_path(path: str, directory: Path) -> str:
    """How a status in ``directory`` stores ``path``: relative to ``directory`` when the path lies inside it (it
    moves with the directory), else absolute."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(directory))
    return os.path.abspath(path) if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def _relative_to(path: str, seen: str) -> str:
    """``path`` relative to ``seen`` (the run directory), both as a status stored them (relative to where the sweep
    ran, or absolute); ``path`` unchanged when only one of them is absolute."""
    if os.path.isabs(path) != os.path.isabs(seen):
        return path
    return os.path.relpath(path, seen)  # both relative: the unknown working directory cancels out


def run_config_path(out: Path, spec: RunSpec) -> Path:
    return Path(out) / "runs" / f"{spec.index}.yaml"


def run_overrides(spec: RunSpec, directory: Path) -> dict[str, Any]:
    """The per-run config: what this run changes on top of the base configs."""
    return {
        "seed_everything": spec.seed,
        "model": {"loss": {"name": spec.objective, "tau": spec.tau}},
        "trainer": {"logger": {"init_args": {"save_dir": str(directory), "name": "fit"}}},
    }


def teacher_data_splits(out: Path) -> dict[str, Path]:
    """The files of the teacher's data that ``generate-data`` writes into the sweep (one per split)."""
    return generated_split_paths(Path(out) / TEACHER_DATA_DIR, SPLITS)


def write_plan(out: Path, plan: SweepPlan) -> None:
    """Write the plan and the per-run configs into ``out``; a directory that holds another plan is refused and
    left unchanged. The caller holds the sweep directory's lock."""
    path = Path(out) / PLAN_FILE
    if path.is_file():
        if SweepPlan.read(path) != plan:
            raise ConfigError(
                f"{out} holds a different sweep (its {PLAN_FILE} differs); choose another --out. Nothing was changed."
            )
    else:
        plan.write(path)
    for spec in plan.runs:
        atomic_write_text(run_config_path(out, spec), yaml.safe_dump(run_overrides(spec, run_dir(out, spec))))


def write_slurm_launcher(
    out: Path,
    plan: SweepPlan,
    partition: Optional[str] = None,
    gpus: int = 1,
    hours: int = 24,
    keep_last_checkpoints: bool = True,
) -> Path:
    """A job-array script: task i runs ``python -m lit_kd sweep --resume <out> --index i`` (with
    ``--keep_last_checkpoints false`` when asked)."""
    out = Path(out)
    lines = [
        "#!/usr/bin/env bash",
        "#SBATCH --job-name=lit_kd-sweep",
        f"#SBATCH --array=0-{len(plan.runs) - 1}",
        f"#SBATCH --gres=gpu:{gpus}",
        f"#SBATCH --time={hours}:00:00",
        f"#SBATCH --output={out.resolve()}/slurm-%A_%a.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += [
        "# one run of the sweep per array task; also usable by hand: bash launch_slurm.sh <index>",
        "set -euo pipefail",
        'index="${SLURM_ARRAY_TASK_ID:-${1:?give a run index}}"',
        f"cd {shlex.quote(os.getcwd())}",
        f"{shlex.quote(sys.executable)} -m lit_kd sweep --resume {shlex.quote(str(out.resolve()))}"
        ' --index "$index"' + ("" if keep_last_checkpoints else " --keep_last_checkpoints false"),
    ]
    path = atomic_write_text(out / "launch_slurm.sh", "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path
