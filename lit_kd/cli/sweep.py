"""``python -m lit_kd sweep``: run an objective × τ × seed grid, each run its own fit + evaluate process.

    python -m lit_kd sweep --base '[configs/pairs/smollm2-cpu.yaml]' --objectives '[fkl,rkl]' --taus '[1,2,3]' \\
        --seeds '[10,20]' --out logs/sweeps/cpu --evaluation.benchmarks '[dolly]' --evaluation.max_examples 50
    python -m lit_kd sweep --resume logs/sweeps/cpu                # continue: done runs are skipped
    python -m lit_kd sweep ... --launcher slurm                    # write configs + launch_slurm.sh, run nothing
    python -m lit_kd sweep ... --evaluation.steps '[16,64,256]'    # also evaluate each run at those steps
    python -m lit_kd report logs/sweeps/cpu
"""

from __future__ import annotations

from typing import Optional, Union

from lit_kd.errors import ConfigError
from lit_kd.experiments.plan import write_slurm_launcher
from lit_kd.experiments.records import SweepEval
from lit_kd.experiments.sweep import Sweep

PAPER_TAUS = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]

# ``'[--trainer.max_epochs,2]'`` parses to ["--trainer.max_epochs", 2]: numbers and booleans are taken as written
CommandLineArgs = list[Union[str, bool, int, float]]


def as_command_line(values: CommandLineArgs) -> list[str]:
    """Command-line words from a parsed list: booleans as ``true``/``false``, numbers as written."""
    return [("true" if value else "false") if isinstance(value, bool) else str(value) for value in values]


def sweep(
    base: Optional[list[str]] = None,
    objectives: list[str] = ["fkl", "rkl"],
    taus: list[float] = PAPER_TAUS,
    seeds: list[int] = [10, 20, 30, 40, 50],
    out: Optional[str] = None,
    evaluation: SweepEval = SweepEval(),
    fit_args: CommandLineArgs = [],
    launcher: str = "local",
    resume: Optional[str] = None,
    index: Optional[int] = None,
    teacher_cache: Optional[str] = None,
    objective_configs: Optional[str] = None,
    regimes: Optional[list[str]] = None,
    seqkd_args: CommandLineArgs = [],
    workers: int = 1,
    keep_last_checkpoints: bool = True,
) -> None:
    """Run (or prepare) a sweep of distillation runs.

    Args:
        base: Fit configs every run starts from (later ones override earlier ones), e.g. a model pair.
        objectives: Registry names to sweep.
        taus: Distillation temperatures to sweep.
        seeds: Training seeds (``seed_everything``); each run is also evaluated with its own seed
            unless ``evaluation.seeds`` is set.
        out: The sweep directory (new, or one holding the same plan).
        evaluation: How each run's best checkpoint is evaluated; ``evaluation.steps`` (e.g. ``'[16,64,256]'``) also
            saves each run's weights at those optimizer steps and evaluates them (learning curves in the report).
        fit_args: Extra command-line overrides for every fit (e.g. ``'[--trainer.max_epochs,2]'``).
        launcher: ``local`` runs the grid here, one process after another; ``slurm`` writes one config
            per run and ``launch_slurm.sh`` (a job array) and runs nothing.
        resume: An existing sweep directory to continue (its plan is reused; other arguments ignored).
        index: With ``resume``: run only this run index (what each array task does).
        teacher_cache: Build the teacher cache once and let every run read it instead of running the teacher:
            ``auto`` (``<out>/teacher_cache``) or a directory (reused when it matches). ``null``: a live teacher.
        objective_configs: The folder of objective files: ``<objective>.yaml`` there is layered on that objective's
            runs (default: ``configs/objectives``, shared by every model pair).
        regimes: Training regimes as a grid axis, from ``configs/regimes`` (off_policy, seqkd, mixed, on_policy);
            runs go to ``<out>/<regime>/<objective>/...``; what a regime requires (``<regime>.sweep.json``, e.g.
            seqkd's teacher-generated data) is built once, before its first run.
            ``null``: the base configs' own regime.
        seqkd_args: Extra arguments of ``generate-data`` for regimes that require the teacher's data (seqkd; e.g.
            ``'[--sampling.max_new_tokens,64]'``).
        workers: ``local``: how many runs go at once, each process with cpu_count // workers torch threads (unless
            OMP_NUM_THREADS is set); on 2 cores, 2 single-thread runs finish sooner than 1 run on both.
        keep_last_checkpoints: ``false``: once a run is evaluated, its ``last.ckpt`` (kept only to resume an
            interrupted fit) is deleted and only the evaluated checkpoint stays; for sweeps too big for the disk.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if resume is not None:
        runner = Sweep.load(resume)
        runner.keep_last_checkpoints = keep_last_checkpoints
        if index is not None:
            if not 0 <= index < len(runner.runs):
                raise ConfigError(f"--index {index} is outside the sweep's {len(runner.runs)} runs")
            status = runner.run_one(runner.runs[index])
            print(f"{runner.runs[index].run_id}: {status.state}")
            if status.state != "done":
                raise SystemExit(1)
            return
        runner.run(workers)
        return
    if index is not None:
        raise ConfigError("--index runs one run of an existing sweep: give it with --resume <sweep dir>")
    if not base or out is None:
        raise ConfigError("a new sweep needs --base (one or more fit configs) and --out (its directory)")
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"--launcher must be local or slurm, got {launcher!r}")
    runner = Sweep.create(
        out,
        base,
        objectives,
        taus,
        seeds,
        evaluation,
        fit_args=as_command_line(fit_args),
        teacher_cache=teacher_cache,
        objective_configs=objective_configs,
        regimes=regimes,
        seqkd_args=as_command_line(seqkd_args),
    )
    runner.keep_last_checkpoints = keep_last_checkpoints
    if launcher == "slurm":
        script = write_slurm_launcher(runner.out, runner.plan, keep_last_checkpoints=keep_last_checkpoints)
        print(f"wrote {len(runner.runs)} run configs under {runner.out / 'runs'} and {script}")
        print(f"submit with: sbatch {script}")
        return
    results = runner.run(workers)
    failed = [r for r in results if r.state == "failed"]
    busy = [r for r in results if r.state == "busy"]
    print(
        f"sweep {runner.out}: {len(results) - len(failed) - len(busy)} done, {len(failed)} failed"
        + (f", {len(busy)} running in another process" if busy else "")
    )
    print(f"report: python -m lit_kd report {runner.out}")
