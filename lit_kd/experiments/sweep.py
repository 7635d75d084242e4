"""Running a planned sweep (``plan.py`` plans it and describes the directory): each run an independent ``fit``
then ``evaluate`` process, its ``status.json`` (``RunStatus``) kept up to date.

A sweep directory has one owner at a time: ``run`` holds ``<out>/.lock`` (pid and host of the owner) and
each run's ``<run>/.lock`` while it runs, so a second sweep on the same directory stops with an error naming
the owner, and the array tasks of a cluster launch (``--index``), which lock only their own run, still run
in parallel. A lock left by a killed process on the same host is taken over.

``status.json`` goes running → done | failed. On restart a done run is skipped; a run whose fit finished
(its ``fit_summary.json`` exists) goes straight to evaluation; an interrupted fit (status still running)
resumes from its ``last.ckpt`` in the same version directory (``--ckpt_path last``), so the best
checkpoint's bookkeeping survives; a fit that failed starts over in a new version directory. Nothing an
earlier attempt wrote is deleted. What a regime requires (``RegimeLayer.requires``) is built once, before the
first run that needs it.

Learning curves (``evaluation.steps``): each fit also saves the student's weights at those global steps
(``lit_kd.training.StepCheckpoints``, ``step-<N>.ckpt`` beside the best checkpoint); after the fit each is
evaluated into ``<run>/eval-step-<N>`` with the same settings, then the best checkpoint into ``<run>/eval``. Each
step evaluation done is recorded at once in ``status.json`` (``step_evals``, with the fit it belongs to), so a
restart evaluates only the missing ones; a step the fit did not reach is recorded as such (the report says
"not reached").
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from lit_kd.errors import CacheError, ConfigError, LockedError
from lit_kd.experiments.plan import (
    TEACHER_DATA_DIR,
    load_plan,
    make_plan,
    read_status,
    run_config_path,
    run_dir,
    teacher_data_splits,
    write_plan,
    write_status,
)
from lit_kd.experiments.records import (
    FIT_SUMMARY_FILE,
    STEP_CHECKPOINT,
    TEACHER_DATA,
    FitSummary,
    RunSpec,
    RunStatus,
    StepEval,
    SweepPlan,
    step_checkpoint_path,
)
from lit_kd.utils.io import numbered_paths
from lit_kd.utils.lock import DirectoryLock

LOCK_FILE = ".lock"
STEP_CHECKPOINTS_CALLBACK = "lit_kd.training.StepCheckpoints"
"""The callback each fit of a sweep with ``evaluation.steps`` gets (by class path: ``training`` is a layer above)."""


@dataclass
class Sweep:
    """A planned sweep on disk: ``create`` plans and writes it, ``run`` executes its runs (or ``run_one`` one)."""

    out: Path
    plan: SweepPlan
    lock: Optional[DirectoryLock] = field(default=None, repr=False, compare=False)
    """The sweep directory's lock while this process owns it"""
    keep_last_checkpoints: bool = field(default=True, repr=False, compare=False)
    """False: a done run's ``last.ckpt`` files are deleted (a sweep of hundreds of runs keeps only the best), and each
    step checkpoint (``evaluation.steps``) once it is evaluated"""
    threads: Optional[int] = field(default=None, repr=False, compare=False)
    """``OMP_NUM_THREADS`` of the runs' processes when several run at once (``run(workers)``)"""
    children: set = field(default_factory=set, repr=False, compare=False)
    """The fit/evaluate processes running now (killed on an interrupt)"""
    interrupted: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    """Set by an interrupt of ``run``: a run whose process ends then stays ``running``"""

    @property
    def runs(self) -> list[RunSpec]:
        return self.plan.runs

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

    @classmethod
    def create(cls, out: str, *plan_args: Any, **plan_options: Any) -> "Sweep":
        """Plan a sweep (``make_plan(out, ...)``, with the same arguments) and write it into ``out``, or reuse ``out``
        when it holds the same plan."""
        plan = make_plan(out, *plan_args, **plan_options)
        sweep = cls(Path(out), plan)
        with sweep.owned():
            write_plan(sweep.out, plan)
        return sweep

    @classmethod
    def load(cls, out: str) -> "Sweep":
        return cls(Path(out), load_plan(out))

    def run_dir(self, spec: RunSpec) -> Path:
        return run_dir(self.out, spec)

    def status(self, spec: RunSpec) -> Optional[RunStatus]:
        return read_status(self.out, spec)

    # -- commands -------------------------------------------------------------------------------

    def fit_command(self, spec: RunSpec, resume: bool) -> list[str]:
        command = [sys.executable, "-m", "lit_kd", "fit"]
        for path in self.plan.base:
            command += ["--config", path]
        if spec.objective in self.plan.objective_configs:  # e.g. configs/objectives/js.yaml: the objective's settings
            command += ["--config", self.plan.objective_configs[spec.objective].path]
        command += ["--config", str(run_config_path(self.out, spec))]
        if self.plan.teacher_cache is not None:
            command += ["--model.teacher_cache", self.plan.teacher_cache]
        if spec.regime is not None:  # after the cache: on-policy and seq-KD regimes need the live teacher
            regime = self.plan.regime_configs[spec.regime]
            command += ["--config", regime.path]
            if TEACHER_DATA in regime.requires:  # its runs train on the teacher's responses
                splits = teacher_data_splits(self.out)
                command += ["--data.raw", "null"] + [f"--data.{name}={path}" for name, path in splits.items()]
        if self.plan.evaluation.steps:  # appended to the configs' own callbacks
            callback = {"class_path": STEP_CHECKPOINTS_CALLBACK, "init_args": {"steps": self.plan.evaluation.steps}}
            command += ["--trainer.callbacks+=" + json.dumps(callback)]
        command += self.plan.fit_args
        if resume:  # into the interrupted attempt's own version directory (see LitKDCLI)
            command += ["--ckpt_path", "last"]
        return command

    def eval_command(self, spec: RunSpec, checkpoint: str, out_dir: Path) -> list[str]:
        e = self.plan.evaluation
        command = [sys.executable, "-m", "lit_kd", "evaluate", "--ckpt", checkpoint, "--out_dir", str(out_dir)]
        command += ["--benchmarks", json.dumps(e.benchmarks), "--data_dir", e.data_dir]
        command += ["--seeds", json.dumps(e.seeds or [spec.seed])]
        command += ["--generation.max_new_tokens", str(e.max_new_tokens), "--generation.batch_size", str(e.batch_size)]
        if e.max_examples is not None:
            command += ["--max_examples", str(e.max_examples)]
        if e.self_bleu_order != 4:
            command += ["--self_bleu_order", str(e.self_bleu_order)]
        return command

    # -- execution ------------------------------------------------------------------------------

    def fit_dirs(self, spec: RunSpec) -> list[Path]:
        """The run's fit attempts (``fit/version_N``), oldest first."""
        versions = (self.run_dir(spec) / "fit").glob("version_*")
        return sorted(versions, key=lambda p: int(p.name.removeprefix("version_")))

    def finished_fit(self, spec: RunSpec) -> Optional[tuple[Path, FitSummary]]:
        """The newest attempt whose fit completed (it wrote ``fit_summary.json``), with that summary."""
        for fit_dir in reversed(self.fit_dirs(spec)):
            if (fit_dir / FIT_SUMMARY_FILE).is_file():
                return fit_dir, FitSummary.read(fit_dir / FIT_SUMMARY_FILE)
        return None

    def _write_status(self, status: RunStatus) -> RunStatus:
        return write_status(self.out, status)

    def _call(self, command: list[str], log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as stream:
            stream.write(f"\n$ {shlex.join(command)}\n")
            stream.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if self.threads is not None:
                env["OMP_NUM_THREADS"] = str(self.threads)
            with subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env) as child:
                self.children.add(child)
                try:
                    code = child.wait()
                except BaseException:  # Ctrl-C in this thread (one worker): the child goes with it
                    child.kill()
                    raise
                finally:
                    self.children.discard(child)
            if self.interrupted.is_set():  # stopped by an interrupt of the sweep: the run stays "running", resumable
                raise KeyboardInterrupt
            return code

    def _fail(self, spec: RunSpec, stage: str, code: int, log: Path, **progress: Any) -> RunStatus:
        """A failed status; ``progress``: the finished fit's ``fit_dir`` and the ``step_evals`` done, kept for a
        restart."""
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.is_file() else []
        return self._write_status(
            RunStatus("failed", spec, stage=stage, returncode=code, log=str(log), log_tail=tail, **progress)
        )

    def ensure_teacher_cache(self) -> None:
        """Build the sweep's teacher cache once (``cache-teacher`` on the base configs and fit arguments), before
        any run needs it; array tasks that start together wait for the one that builds it."""
        if self.plan.teacher_cache is not None:
            cache = Path(self.plan.teacher_cache)
            self.build_once("cache-teacher", cache, cache / "manifest.json")

    def ensure_prerequisites(self, spec: RunSpec) -> None:
        """Build what the run's regime requires (``RegimeLayer.requires``), once for the whole sweep."""
        requires = self.plan.regime_configs[spec.regime].requires if spec.regime is not None else []
        if TEACHER_DATA in requires:
            self.ensure_teacher_data()

    def ensure_teacher_data(self) -> None:
        """The teacher's responses to the training prompts, generated once (``generate-data`` on the base configs,
        into ``<out>/seqkd_data``, with the plan's ``seqkd_args``)."""
        done = teacher_data_splits(self.out)["train"]
        self.build_once("generate-data", self.out / TEACHER_DATA_DIR, done, self.plan.seqkd_args)

    def build_once(self, command_name: str, out: Path, done: Path, extra: Optional[list[str]] = None) -> None:
        """Run ``python -m lit_kd <command_name>`` on the base configs and fit arguments into ``out`` unless
        ``done`` exists; processes that start together wait for the one that holds the lock."""
        if done.is_file():
            return
        with DirectoryLock(self.out / f".{out.name}.lock", f"{command_name} of").acquire(wait=24 * 3600):
            if done.is_file():
                return  # built by another process while this one waited
            command = [sys.executable, "-m", "lit_kd", command_name]
            for path in self.plan.base:
                command += ["--config", path]
            command += [*self.plan.fit_args, "--out", str(out), *(extra or [])]
            log = self.out / f"{out.name}.log"
            print(f"{command_name}: writing {out} (log: {log})", flush=True)
            code = self._call(command, log)
            if code != 0:
                tail = " | ".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-3:])
                raise CacheError(f"the sweep's {command_name} failed (exit {code}; {log}): {tail}")

    def run_one(self, spec: RunSpec) -> RunStatus:
        """Fit then evaluate one run, picking up where an earlier attempt stopped; returns its status. The run's
        own lock is held meanwhile (``LockedError`` if another process is running it)."""
        self.ensure_teacher_cache()
        self.ensure_prerequisites(spec)
        with DirectoryLock(self.run_dir(spec) / LOCK_FILE, "sweep run directory"):
            return self._run_one(spec)

    def _run_one(self, spec: RunSpec) -> RunStatus:
        previous = self.status(spec)
        if previous is not None and previous.state == "done":
            if not self.keep_last_checkpoints and previous.checkpoint:
                self.remove_last_checkpoints(spec, keep=Path(previous.checkpoint))
            return previous
        run_dir = self.run_dir(spec)
        started, stamp = time.time(), time.strftime("%Y-%m-%d %H:%M:%S")
        kept = {"fit_dir": previous.fit_dir, "step_evals": previous.step_evals} if previous is not None else {}
        self._write_status(RunStatus("running", spec, started=stamp, **kept))  # the step evaluations done stay known
        fit_log = run_dir / "fit.log"
        finished = self.finished_fit(spec)
        if finished is None:
            interrupted = previous is not None and previous.state == "running"
            resume = interrupted and any((d / "checkpoints" / "last.ckpt").is_file() for d in self.fit_dirs(spec))
            code = self._call(self.fit_command(spec, resume), fit_log)
            finished = self.finished_fit(spec)
            if code != 0 or finished is None:
                return self._fail(spec, "fit", code, fit_log)
        fit_dir, summary = finished
        checkpoint = summary.checkpoint
        if not checkpoint or not Path(checkpoint).is_file():
            return self._fail(spec, "fit (no checkpoint)", 0, fit_log)
        eval_log = run_dir / "eval.log"
        points = self.carried_step_evals(previous, fit_dir)
        for step in self.plan.evaluation.steps:
            if any(point.step == step for point in points):
                continue
            point, code = self.evaluate_step(spec, summary, step, eval_log)
            progress = {"fit_dir": str(fit_dir), "step_evals": points}
            if point is None:
                return self._fail(spec, f"evaluate step {step}", code, eval_log, **progress)
            points.append(point)
            self._write_status(RunStatus("running", spec, started=stamp, **progress))
            if not self.keep_last_checkpoints:
                remove_path(step_checkpoint_path(Path(checkpoint).parent, step))
        eval_dir = self.new_eval_dir(run_dir / "eval")
        code = self._call(self.eval_command(spec, checkpoint, eval_dir), eval_log)
        if code != 0 or not (eval_dir / "results.json").is_file():
            return self._fail(spec, "evaluate", code, eval_log, fit_dir=str(fit_dir), step_evals=points)
        status = self._write_status(
            RunStatus(
                "done",
                spec,
                fit_dir=str(fit_dir),
                checkpoint=checkpoint,
                fit_summary=summary,
                eval_dir=str(eval_dir),
                minutes=round((time.time() - started) / 60, 2),
                step_evals=points,
            )
        )
        if not self.keep_last_checkpoints:
            self.remove_last_checkpoints(spec, keep=Path(checkpoint))
        return status

    @staticmethod
    def new_eval_dir(base: Path) -> Path:
        """A new directory (``eval``, ``eval-2``, ...): an earlier attempt's results stay where they are."""
        return next(path for path in numbered_paths(base) if not path.exists())

    def carried_step_evals(self, previous: Optional[RunStatus], fit_dir: Path) -> list[StepEval]:
        """The step evaluations an earlier attempt finished on this same fit (whose results are still there)."""
        if previous is None or previous.fit_dir != str(fit_dir):
            return []
        return [p for p in previous.step_evals or [] if not p.reached or (Path(p.eval_dir) / "results.json").is_file()]

    def evaluate_step(self, spec: RunSpec, summary: FitSummary, step: int, log: Path) -> tuple[Optional[StepEval], int]:
        """Evaluate the weights the fit saved at global step ``step`` into ``<run>/eval-step-<step>``; a step after
        the fit's last one with no checkpoint is not reached. None and the exit code when the evaluation fails."""
        path = step_checkpoint_path(Path(str(summary.checkpoint)).parent, step)
        if not path.exists():
            if step > summary.global_step:
                return StepEval(step), 0
            with open(log, "a", encoding="utf-8") as stream:  # the failed status's log tail says it
                stream.write(f"\nno checkpoint of step {step} ({path}); the fit reached step {summary.global_step}\n")
            return None, 0
        eval_dir = self.new_eval_dir(self.run_dir(spec) / f"eval-step-{step}")
        code = self._call(self.eval_command(spec, str(path), eval_dir), log)
        if code != 0 or not (eval_dir / "results.json").is_file():
            return None, code
        return StepEval(step, str(eval_dir)), 0

    def remove_last_checkpoints(self, spec: RunSpec, keep: Path) -> None:
        """Delete the ``last.ckpt`` of every fit attempt of a done run (it exists to resume an interrupted fit) and
        its step checkpoints (``evaluation.steps``, evaluated by then), never the evaluated checkpoint ``keep``."""
        for fit_dir in self.fit_dirs(spec):
            folder = fit_dir / "checkpoints"
            for path in [folder / "last.ckpt", *folder.glob(STEP_CHECKPOINT.format(step="*"))]:
                if path.exists() and path.resolve() != keep.resolve():
                    remove_path(path)

    def run(self, workers: int = 1) -> list[RunStatus]:
        """Every run in order, holding the sweep's lock; a failure is recorded and the sweep goes on; a run that
        another process (an array task) is running is left to it (state ``busy``). ``workers`` > 1 runs that many
        runs at once, each process with cpu_count // workers torch threads unless ``OMP_NUM_THREADS`` is set.
        An interrupt (Ctrl-C) stops the runs in progress and leaves them ``running``: ``--resume`` continues them."""
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        with self.owned():
            self.ensure_teacher_cache()
            for spec in self.runs:  # built once, before runs start side by side
                self.ensure_prerequisites(spec)
            if workers == 1:
                return [self._run_and_say(spec) for spec in self.runs]
            if "OMP_NUM_THREADS" not in os.environ:
                self.threads = max(1, len(os.sched_getaffinity(0)) // workers)
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                return list(pool.map(self._run_and_say, self.runs))
            except BaseException:
                self.interrupted.set()
                for child in list(self.children):
                    child.kill()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _run_and_say(self, spec: RunSpec) -> RunStatus:
        previous = self.status(spec)
        try:
            status = self.run_one(spec)
            done_before = previous is not None and previous.state == "done"
            word = "skipped (done)" if done_before else status.state
        except LockedError as err:
            status, word = RunStatus("busy", spec, reason=str(err)), f"busy: {err}"
        print(f"[{spec.index + 1}/{len(self.runs)}] {spec.run_id}: {word}", flush=True)
        return status


def remove_path(path: Path) -> None:
    """Delete a checkpoint if it is there: a file, or a sharded (FSDP2) checkpoint's folder."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
