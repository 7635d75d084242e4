"""Objective × τ × seed sweeps: each run an independent ``fit`` then ``evaluate`` process.

Layout of a sweep directory::

    <out>/sweep.json                     the plan (base configs, grid, evaluation settings)
    <out>/runs/<index>.yaml              the per-run config layered over the base configs
    <out>/launch_slurm.sh                a job-array script (``--launcher slurm``)
    <out>/<objective>/tau_<τ>/seed_<s>/
        fit/version_N/                   TensorBoard logs, checkpoints, fit_summary.json (one per attempt)
    <out>/teacher_cache/, teacher_cache.log   the teacher cache every run reads (``--teacher_cache auto``)
        eval[-k]/                        results.json, results.md, generations.jsonl
        fit.log, eval.log                the processes' output (appended per attempt)
        status.json                      done | failed, with what the report needs

A sweep directory has one owner at a time: ``run`` holds ``<out>/.lock`` (pid and host of the owner) and
each run's ``<run>/.lock`` while it runs, so a second sweep on the same directory stops with an error naming
the owner, and the array tasks of a cluster launch (``--index``), which lock only their own run, still run
in parallel. A lock left by a killed process on the same host is taken over.

``status.json`` goes running → done | failed. On restart a done run is skipped; a run whose fit finished
(its ``fit_summary.json`` exists) goes straight to evaluation; an interrupted fit (status still running)
resumes from its ``last.ckpt`` in the same version directory (``--ckpt_path last``), so the best
checkpoint's bookkeeping survives; a fit that failed starts over in a new version directory. Nothing an
earlier attempt wrote is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from lit_kd.errors import CacheError, ConfigError, LockedError
from lit_kd.losses import check_tau, get_objective
from lit_kd.utils.io import atomic_write_text, numbered_paths
from lit_kd.utils.lock import DirectoryLock
from lit_kd.utils.paths import OBJECTIVE_CONFIGS, REGIME_CONFIGS
from lit_kd.utils.yaml_files import load_yaml_file

LOCK_FILE = ".lock"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class SweepEval:
    """How each run's best checkpoint is evaluated."""

    benchmarks: list[str] = field(default_factory=lambda: ["dolly", "self_inst", "vicuna", "sinst", "uinst"])
    """Benchmark names under ``data_dir``, or ``name=FILE_OR_HUB``."""
    data_dir: str = "../shared/data/minillm"
    seeds: Optional[list[int]] = None
    """Sampling seeds per run; ``null`` = the run's own training seed."""
    max_examples: Optional[int] = None
    max_new_tokens: int = 256
    batch_size: int = 32


@dataclass(frozen=True)
class RunSpec:
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


def plan_runs(
    objectives: list[str], taus: list[float], seeds: list[int], regimes: Optional[list[str]] = None
) -> list[RunSpec]:
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
    if not (objectives and taus and seeds):
        raise ConfigError("a sweep needs at least one objective, one tau and one seed")
    objectives, taus, seeds = (list(dict.fromkeys(v)) for v in (objectives, [float(t) for t in taus], seeds))
    axis = list(dict.fromkeys(regimes)) if regimes else [None]
    grid = [(r, o, t, int(s)) for r in axis for o in objectives for t in taus for s in seeds]
    runs = [RunSpec(i, o, t, s, r) for i, (r, o, t, s) in enumerate(grid)]
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--taus {taus}: two values share a run directory name (tau_{{τ:g}}); use distinct values")
    return runs


def run_overrides(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """The per-run config: what this run changes on top of the base configs."""
    return {
        "seed_everything": spec.seed,
        "model": {"loss": {"name": spec.objective, "tau": spec.tau}},
        "trainer": {"logger": {"init_args": {"save_dir": str(run_dir), "name": "fit"}}},
    }


@dataclass
class Sweep:
    """A planned sweep on disk: ``create`` writes the plan, ``run`` executes (or ``run_one``) runs."""

    out: Path
    base: list[str]
    runs: list[RunSpec]
    evaluation: SweepEval
    fit_args: list[str] = field(default_factory=list)
    objective_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    """``<objective>.yaml`` files of the objective folder (``configs/objectives``), layered on that objective's runs
    (path, sha256)"""
    teacher_cache: Optional[str] = None
    """A teacher cache directory built once (``cache-teacher``) before the first run and read by every run"""
    regime_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    """``<regime>.yaml`` of ``configs/regimes`` for each regime of the grid (path, sha256)"""
    seqkd_args: list[str] = field(default_factory=list)
    """Extra arguments of ``generate-data`` for the seqkd regime (e.g. ``--sampling.max_new_tokens 64``)"""
    lock: Optional[DirectoryLock] = field(default=None, repr=False, compare=False)
    """The sweep directory's lock while this process owns it"""

    @contextmanager
    def owned(self) -> Iterator["Sweep"]:
        """Hold the sweep directory's lock (re-entrant); ``LockedError`` names the owner if another has it."""
        if self.lock is not None:
            yield self
            return
        self.lock = DirectoryLock(self.out / LOCK_FILE, "sweep directory").acquire()
        if self.lock.took_over:
            print(f"took over the sweep's lock from pid {self.lock.took_over.get('pid')} (no longer running)")
        try:
            yield self
        finally:
            self.lock.release()
            self.lock = None

    # -- planning -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        out: str,
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
    ) -> "Sweep":
        for path in base:
            load_yaml_file(path, "base config")  # missing or not YAML: an error naming the file, before any write
        runs = plan_runs(objectives, taus, seeds, regimes)
        regime_layers = {}
        for name in dict.fromkeys(regimes or []):
            path = REGIME_CONFIGS / f"{name}.yaml"
            if not path.is_file():
                known = ", ".join(sorted(p.stem for p in REGIME_CONFIGS.glob("*.yaml")))
                raise ConfigError(f"--regimes: unknown regime {name!r}; the regimes are {known}")
            regime_layers[name] = {"path": str(path.resolve()), "sha256": _sha256(path)}
        base = [os.path.abspath(p) for p in base]
        folder = Path(objective_configs) if objective_configs is not None else OBJECTIVE_CONFIGS
        layers = {
            name: {"path": str(path.resolve()), "sha256": _sha256(path)}
            for name in dict.fromkeys(r.objective for r in runs)
            if (path := folder / f"{name}.yaml").is_file()
        }
        if teacher_cache == "auto":
            teacher_cache = str(Path(out) / "teacher_cache")
        cache = os.path.abspath(teacher_cache) if teacher_cache is not None else None
        sweep = cls(
            Path(out),
            base,
            runs,
            evaluation,
            list(fit_args or []),
            layers,
            cache,
            regime_layers,
            list(seqkd_args or []),
        )
        plan = sweep.plan()
        existing = sweep.out / "sweep.json"
        with sweep.owned():
            if existing.is_file():
                older = {
                    "teacher_cache": None,
                    "regime_configs": {},
                    **json.loads(existing.read_text()),
                }  # (older plans)
                older["runs"] = [{"regime": None, **run} for run in older["runs"]]
                if older != plan:
                    raise ConfigError(
                        f"{sweep.out} holds a different sweep (its sweep.json differs); choose another --out. "
                        "Nothing was changed."
                    )
            else:
                atomic_write_text(existing, json.dumps(plan, indent=2) + "\n")
            for spec in sweep.runs:
                atomic_write_text(
                    sweep.out / "runs" / f"{spec.index}.yaml", yaml.safe_dump(run_overrides(spec, sweep.run_dir(spec)))
                )
        return sweep

    @classmethod
    def load(cls, out: str) -> "Sweep":
        path = Path(out) / "sweep.json"
        if not path.is_file():
            raise ConfigError(f"{out} is not a sweep directory (no sweep.json)")
        try:
            plan = json.loads(path.read_text())
            runs = [RunSpec(**r) for r in plan["runs"]]
            sweep = cls(
                Path(out),
                plan["base"],
                runs,
                SweepEval(**plan["eval"]),
                plan["fit_args"],
                plan["objective_configs"],
                plan.get("teacher_cache"),
                plan.get("regime_configs", {}),
                plan.get("seqkd_args", []),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is not a valid sweep plan ({err})") from None
        for name, layer in {**sweep.objective_configs, **sweep.regime_configs}.items():
            if not Path(layer["path"]).is_file() or _sha256(Path(layer["path"])) != layer["sha256"]:
                raise ConfigError(
                    f"{layer['path']} (the {name} runs' config) changed or vanished since the sweep was planned; "
                    "restore it or start a new sweep"
                )
        return sweep

    def plan(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "runs": [asdict(r) for r in self.runs],
            "eval": asdict(self.evaluation),
            "fit_args": self.fit_args,
            "objective_configs": self.objective_configs,
            "teacher_cache": self.teacher_cache,
            "regime_configs": self.regime_configs,
            "seqkd_args": self.seqkd_args,
        }

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / spec.run_id

    def status(self, spec: RunSpec) -> Optional[dict[str, Any]]:
        path = self.run_dir(spec) / "status.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{path} is not valid JSON; delete it to run {spec.run_id} again") from None

    # -- commands -------------------------------------------------------------------------------

    def fit_command(self, spec: RunSpec, resume: bool) -> list[str]:
        command = [sys.executable, "-m", "lit_kd", "fit"]
        for path in self.base:
            command += ["--config", path]
        if spec.objective in self.objective_configs:  # e.g. configs/objectives/js.yaml: the objective's settings
            command += ["--config", self.objective_configs[spec.objective]["path"]]
        command += ["--config", str(self.out / "runs" / f"{spec.index}.yaml")]
        if self.teacher_cache is not None:
            command += ["--model.teacher_cache", self.teacher_cache]
        if spec.regime is not None:  # after the cache: on-policy and seq-KD regimes need the live teacher
            command += ["--config", self.regime_configs[spec.regime]["path"]]
            if spec.regime == "seqkd":
                data = self.out / "seqkd_data"
                command += ["--data.raw", "null"] + [
                    f"--data.{n}={data / f'{n}.jsonl'}" for n in ("train", "val", "test")
                ]
        command += self.fit_args
        if resume:  # into the interrupted attempt's own version directory (see LitKDCLI)
            command += ["--ckpt_path", "last"]
        return command

    def eval_command(self, spec: RunSpec, checkpoint: str, out_dir: Path) -> list[str]:
        e = self.evaluation
        command = [sys.executable, "-m", "lit_kd", "evaluate", "--ckpt", checkpoint, "--out_dir", str(out_dir)]
        command += ["--benchmarks", json.dumps(e.benchmarks), "--data_dir", e.data_dir]
        command += ["--seeds", json.dumps(e.seeds or [spec.seed])]
        command += ["--generation.max_new_tokens", str(e.max_new_tokens), "--generation.batch_size", str(e.batch_size)]
        if e.max_examples is not None:
            command += ["--max_examples", str(e.max_examples)]
        return command

    # -- execution ------------------------------------------------------------------------------

    def fit_dirs(self, spec: RunSpec) -> list[Path]:
        """The run's fit attempts (``fit/version_N``), oldest first."""
        versions = (self.run_dir(spec) / "fit").glob("version_*")
        return sorted(versions, key=lambda p: int(p.name.removeprefix("version_")))

    def finished_fit(self, spec: RunSpec) -> Optional[tuple[Path, dict[str, Any]]]:
        """The newest attempt whose fit completed (it wrote ``fit_summary.json``), with that summary."""
        for fit_dir in reversed(self.fit_dirs(spec)):
            if (fit_dir / "fit_summary.json").is_file():
                return fit_dir, json.loads((fit_dir / "fit_summary.json").read_text())
        return None

    def _write_status(self, spec: RunSpec, status: dict[str, Any]) -> dict[str, Any]:
        status = {**status, "spec": asdict(spec)}
        atomic_write_text(self.run_dir(spec) / "status.json", json.dumps(status, indent=2) + "\n")
        return status

    def _call(self, command: list[str], log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as stream:
            stream.write(f"\n$ {shlex.join(command)}\n")
            stream.flush()
            return subprocess.call(
                command, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )

    def _fail(self, spec: RunSpec, stage: str, code: int, log: Path) -> dict[str, Any]:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.is_file() else []
        return self._write_status(
            spec, {"state": "failed", "stage": stage, "returncode": code, "log": str(log), "log_tail": tail}
        )

    def ensure_teacher_cache(self) -> None:
        """Build the sweep's teacher cache once (``cache-teacher`` on the base configs and fit arguments), before
        any run needs it; array tasks that start together wait for the one that builds it."""
        if self.teacher_cache is not None:
            self.build_once("cache-teacher", Path(self.teacher_cache), Path(self.teacher_cache) / "manifest.json")

    def ensure_seqkd_data(self) -> None:
        """For a ``seqkd`` regime: the teacher's responses to the training prompts, generated once
        (``generate-data`` on the base configs, into ``<out>/seqkd_data``), before any run needs them."""
        if "seqkd" in self.regime_configs:
            done = self.out / "seqkd_data" / "train.jsonl"
            self.build_once("generate-data", self.out / "seqkd_data", done, self.seqkd_args)

    def build_once(self, command_name: str, out: Path, done: Path, extra: Optional[list[str]] = None) -> None:
        """Run ``python -m lit_kd <command_name>`` on the base configs and fit arguments into ``out`` unless
        ``done`` exists; processes that start together wait for the one that holds the lock."""
        if done.is_file():
            return
        with DirectoryLock(self.out / f".{out.name}.lock", f"{command_name} of").acquire(wait=24 * 3600):
            if done.is_file():
                return  # built by another process while this one waited
            command = [sys.executable, "-m", "lit_kd", command_name]
            for path in self.base:
                command += ["--config", path]
            command += [*self.fit_args, "--out", str(out), *(extra or [])]
            log = self.out / f"{out.name}.log"
            print(f"{command_name}: writing {out} (log: {log})", flush=True)
            code = self._call(command, log)
            if code != 0:
                tail = " | ".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-3:])
                raise CacheError(f"the sweep's {command_name} failed (exit {code}; {log}): {tail}")

    def run_one(self, spec: RunSpec) -> dict[str, Any]:
        """Fit then evaluate one run, picking up where an earlier attempt stopped; returns its status. The run's
        own lock is held meanwhile (``LockedError`` if another process is running it)."""
        self.ensure_teacher_cache()
        if spec.regime == "seqkd":
            self.ensure_seqkd_data()
        with DirectoryLock(self.run_dir(spec) / LOCK_FILE, "sweep run directory"):
            return self._run_one(spec)

    def _run_one(self, spec: RunSpec) -> dict[str, Any]:
        previous = self.status(spec) or {}
        if previous.get("state") == "done":
            return previous
        run_dir = self.run_dir(spec)
        started = time.time()
        self._write_status(spec, {"state": "running", "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        fit_log = run_dir / "fit.log"
        finished = self.finished_fit(spec)
        if finished is None:
            interrupted = previous.get("state") == "running"
            resume = interrupted and any((d / "checkpoints" / "last.ckpt").is_file() for d in self.fit_dirs(spec))
            code = self._call(self.fit_command(spec, resume), fit_log)
            finished = self.finished_fit(spec)
            if code != 0 or finished is None:
                return self._fail(spec, "fit", code, fit_log)
        fit_dir, summary = finished
        checkpoint = summary.get("best_model_path") or summary.get("last_model_path")
        if not checkpoint or not Path(checkpoint).is_file():
            return self._fail(spec, "fit (no checkpoint)", 0, fit_log)
        eval_log = run_dir / "eval.log"
        # a new directory (eval, eval-2, ...): an earlier attempt's results stay where they are
        eval_dir = next(path for path in numbered_paths(run_dir / "eval") if not path.exists())
        code = self._call(self.eval_command(spec, checkpoint, eval_dir), eval_log)
        if code != 0 or not (eval_dir / "results.json").is_file():
            return self._fail(spec, "evaluate", code, eval_log)
        return self._write_status(
            spec,
            {
                "state": "done",
                "fit_dir": str(fit_dir),
                "checkpoint": checkpoint,
                "fit_summary": summary,
                "eval_dir": str(eval_dir),
                "minutes": round((time.time() - started) / 60, 2),
            },
        )

    def run(self) -> list[dict[str, Any]]:
        """Every run in order, holding the sweep's lock; a failure is recorded and the sweep goes on; a run that
        another process (an array task) is running is left to it (state ``busy``)."""
        results = []
        with self.owned():
            self.ensure_teacher_cache()
            for spec in self.runs:
                previous = (self.status(spec) or {}).get("state")
                try:
                    status = self.run_one(spec)
                    word = "skipped (done)" if previous == "done" else status["state"]
                except LockedError as err:
                    status, word = {"state": "busy", "spec": asdict(spec), "reason": str(err)}, f"busy: {err}"
                print(f"[{spec.index + 1}/{len(self.runs)}] {spec.run_id}: {word}", flush=True)
                results.append(status)
        return results

    def write_slurm_launcher(self, partition: Optional[str] = None, gpus: int = 1, hours: int = 24) -> Path:
        """A job-array script: task i runs ``python -m lit_kd sweep --resume <out> --index i``."""
        lines = [
            "#!/usr/bin/env bash",
            "#SBATCH --job-name=lit_kd-sweep",
            f"#SBATCH --array=0-{len(self.runs) - 1}",
            f"#SBATCH --gres=gpu:{gpus}",
            f"#SBATCH --time={hours}:00:00",
            f"#SBATCH --output={self.out.resolve()}/slurm-%A_%a.out",
        ]
        if partition:
            lines.append(f"#SBATCH --partition={partition}")
        lines += [
            "# one run of the sweep per array task; also usable by hand: bash launch_slurm.sh <index>",
            "set -euo pipefail",
            'index="${SLURM_ARRAY_TASK_ID:-${1:?give a run index}}"',
            f"cd {shlex.quote(os.getcwd())}",
            f"{shlex.quote(sys.executable)} -m lit_kd sweep --resume {shlex.quote(str(self.out.resolve()))}"
            ' --index "$index"',
        ]
        path = atomic_write_text(self.out / "launch_slurm.sh", "\n".join(lines) + "\n")
        path.chmod(0o755)
        return path
