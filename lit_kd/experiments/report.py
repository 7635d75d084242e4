"""The paper-style report of a sweep: Table 1, Figure 1, the τ-gain heatmap and the KD diagnostics vs τ.

Numbers per run: for each benchmark, the ROUGE-L of the run's best checkpoint averaged over its sampling
seeds; "avg" is the mean over benchmarks. A cell (objective, τ) is the mean ± sample std over the runs'
training seeds. The best τ of an objective is chosen by mean validation ROUGE-L (the monitored score of
the best checkpoints) when every run has one, else by the test average — the report says which.
Diagnostics are each run's mean of the logged ``diag/*`` values over its training steps.

Learning curves (a sweep with ``evaluation.steps``): the same numbers for each run's weights at each of those steps
(``<run>/eval-step-<N>``) and at the end (the usual evaluation, placed at the fit's last step): a table and the
ordering of (objective, τ) by average ROUGE-L per evaluation point, ``learning_curves.csv``, and one figure per
objective (``learning_curves_<objective>.png``: each metric against steps, one line per τ, a band of ± one std)
and one per τ (``learning_curves_by_tau.png``: average ROUGE-L against steps, one line per objective).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lit_kd.errors import ConfigError
from lit_kd.eval.diversity import DISTINCT_ORDERS
from lit_kd.eval.evaluate import QUALITY_COLUMNS, mean_std, quality_cell, quality_header
from lit_kd.experiments.plan import load_plan, read_status, sha256
from lit_kd.experiments.records import RunSpec, RunStatus, SweepPlan
from lit_kd.utils.io import atomic_path, atomic_write_text

DIAGNOSTICS = (
    "teacher_entropy",
    "teacher_nontarget_mass",
    "top1_agreement",
    "kd_grad_target_norm",
    "kd_grad_nontarget_norm",
)
"""The ``diag/*`` metrics a report reads (``lit_kd/losses/diagnostics.py``), averaged over a run's logged steps"""
SUMMARY_QUALITY = ("distinct_2", "self_bleu", "entropy", "ece")
"""The diversity and calibration columns of the figure and of the variants table (Distinct-2 standing for n)"""
CURVE_METRICS = {"avg": "average ROUGE-L", "distinct_2": "Distinct-2", "self_bleu": "Self-BLEU", "ece": "ECE"}
"""The panels of a learning-curve figure and the metrics of ``learning_curves.csv`` (``avg``: over benchmarks)"""
END = "end"
"""The last evaluation point of a learning curve: the run's usual evaluation, after its fit"""


@dataclass
class RunRecord:
    objective: str
    tau: float
    seed: int
    scores: dict[str, float]
    val_score: Optional[float] = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    """diversity and calibration (``QUALITY``), each averaged over the benchmarks that have it"""
    name: str = ""
    """The registry objective (``objective`` is the run's label, which names its regime as well)"""
    regime: Optional[str] = None
    minutes: Optional[float] = None
    """the run's wall time, fit and evaluation (its status record's)"""
    step: Optional[int] = None
    """the global step of the evaluated weights: a step evaluation's, or the fit's last step for the final one"""

    @property
    def avg(self) -> float:
        return statistics.fmean(self.scores.values())

    def metric(self, key: str) -> Optional[float]:
        """``avg`` (average ROUGE-L) or a quality key (``QUALITY_COLUMNS``); None where not measured."""
        return self.avg if key == "avg" else self.quality.get(key)


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def _fmt_diag(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = mean_std(values)
    return f"{mean:.3g} ± {std:.2g}"


def _fmt_quality(key: str, values: list[float]) -> str:
    return quality_cell(key, *mean_std(values)) if values else "n/a"


def _step_axis(ax: Any, steps: list[float]) -> None:
    """A log axis of optimizer steps ticked at the evaluation points themselves, labelled as plain numbers."""
    ticks = sorted(set(steps))
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ticks, labels=[f"{step:g}" for step in ticks])
    ax.set_xlabel("optimizer steps")


def _curve_with_band(ax: Any, points: list[tuple[Any, float, float, float, int]], label: str) -> None:
    """One learning curve of ``Report.curve``'s points: the means against steps, a band of ± one std around them."""
    steps, means, stds = ([p[i] for p in points] for i in (1, 2, 3))
    ax.plot(steps, means, marker="o", label=label)
    ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2)


def _save_figure(fig, path: Path) -> None:
    """PNG written beside its target and renamed over it: an interrupted report keeps the previous figure."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def read_diagnostics(fit_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fit_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags().get("scalars", []))
    return {
        name: statistics.fmean(e.value for e in events.Scalars(f"diag/{name}"))
        for name in DIAGNOSTICS
        if f"diag/{name}" in tags
    }


def not_done(status: Optional[RunStatus]) -> str:
    """Why a run has no result yet, from its status record."""
    if status is None:
        return "not run"
    if status.state == "running":
        return (
            f"started {status.started}, not finished (running now, or interrupted: "
            "`python -m lit_kd sweep --resume <sweep dir>` continues it)"
        )
    return f"failed at {status.stage} (see {status.log})"


def run_quality(result: dict[str, Any]) -> dict[str, float]:
    """A run's diversity and calibration from its ``results.json`` entry: Distinct-n (mean over the sampling seeds),
    Self-BLEU, entropy and ECE, each averaged over the benchmarks that have it (none for an older evaluation)."""
    per_benchmark: dict[str, list[float]] = {}
    for per_seed in result.get("distinct", {}).values():
        for n in DISTINCT_ORDERS:
            values = [orders[str(n)] for orders in per_seed.values() if str(n) in orders]
            if values:
                per_benchmark.setdefault(f"distinct_{n}", []).append(statistics.fmean(values))
    for value in result.get("self_bleu", {}).values():
        if value is not None:
            per_benchmark.setdefault("self_bleu", []).append(value)
    for scores in result.get("confidence", {}).values():
        for key in ("entropy", "ece"):
            if key in scores:
                per_benchmark.setdefault(key, []).append(scores[key])
    return {key: statistics.fmean(values) for key, values in per_benchmark.items()}


def read_evaluation(eval_dir: str | Path) -> tuple[dict[str, float], dict[str, float]]:
    """An evaluation's ``results.json``: ROUGE-L per benchmark (mean over the sampling seeds), and its diversity and
    calibration (``run_quality``)."""
    result = json.loads((Path(eval_dir) / "results.json").read_text())["results"][0]
    scores = {b: statistics.fmean(per_seed.values()) for b, per_seed in result["per_seed"].items()}
    return scores, run_quality(result)


def collect(out: Path, plan: SweepPlan) -> tuple[list[RunRecord], list[str]]:
    """Records of the finished runs of the sweep in ``out``, and a line for each run that is not done."""
    records, problems = [], []
    for spec in plan.runs:
        status = read_status(out, spec)
        if status is None or status.state != "done":
            problems.append(f"{spec.run_id}: {not_done(status)}")
            continue
        results_path = Path(status.eval_dir) / "results.json"
        if not results_path.is_file():
            problems.append(f"{spec.run_id}: marked done, but {results_path} is missing")
            continue
        scores, quality = read_evaluation(status.eval_dir)
        summary = status.fit_summary
        val = summary.best_model_score if summary.monitor == "val/rougeL" else None
        diagnostics = read_diagnostics(Path(status.fit_dir))
        records.append(
            RunRecord(spec.label, spec.tau, spec.seed, scores, val, diagnostics, quality, spec.objective, spec.regime,
                      status.minutes, summary.global_step)  # fmt: skip
        )
    return records, problems


@dataclass
class StepRecords:
    """The step evaluations of a sweep's done runs (``evaluation.steps``): the records at each step, and for each
    step the runs that did not reach it or whose results are missing."""

    records: dict[int, list[RunRecord]] = field(default_factory=dict)
    missing: dict[int, list[tuple[RunSpec, str]]] = field(default_factory=dict)
    """step → (run, why it has no result there: ``not reached ...``, ``not evaluated``, a missing file)"""


def collect_steps(out: Path, plan: SweepPlan) -> StepRecords:
    """A ``RunRecord`` (scores and quality) per done run and evaluated step of the sweep in ``out``."""
    found = StepRecords({step: [] for step in plan.evaluation.steps}, {step: [] for step in plan.evaluation.steps})
    for spec in plan.runs:
        status = read_status(out, spec)
        if status is None or status.state != "done":
            continue  # collect() lists it
        for step in plan.evaluation.steps:
            point = status.evaluated_step(step)
            if point is None or not point.reached:
                last = status.fit_summary.global_step
                why = f"not reached (its fit ended at step {last})" if point is not None else "not evaluated"
                found.missing[step].append((spec, why))
            elif not (Path(point.eval_dir) / "results.json").is_file():
                found.missing[step].append((spec, f"{Path(point.eval_dir) / 'results.json'} is missing"))
            else:
                scores, quality = read_evaluation(point.eval_dir)
                found.records[step].append(RunRecord(spec.label, spec.tau, spec.seed, scores, quality=quality,
                                                     name=spec.objective, regime=spec.regime, step=step))  # fmt: skip
    return found


class Report:
    def __init__(
        self,
        out: Path,
        plan: SweepPlan,
        records: list[RunRecord],
        problems: list[str],
        variants: Optional[list[RunRecord]] = None,
        steps: Optional[StepRecords] = None,
    ) -> None:
        self.out, self.plan, self.records, self.problems = Path(out), plan, records, problems
        self.variants = variants or []
        """Runs of the ``--variants`` sweeps (τ schedules and rules as regimes), compared with the constant τ"""
        self.steps = steps or StepRecords()
        """The runs' evaluations at ``evaluation.steps`` (learning curves)"""
        self.objectives = list(dict.fromkeys(r.label for r in plan.runs))  # "<objective> [<regime>]" with regimes
        self.taus = sorted({r.tau for r in plan.runs})
        self.benchmarks = list(records[0].scores) if records else []
        self.by_val = bool(records) and all(r.val_score is not None for r in records)

    def run_time(self) -> str:
        """``; wall time per run …`` from the done runs' records (fit and evaluation; runs side by side overlap)."""
        minutes = [r.minutes for r in self.records if r.minutes is not None]
        if not minutes:
            return ""
        return (f"; wall time per run (fit + evaluation) {min(minutes):.1f}–{max(minutes):.1f} min, median "
                f"{statistics.median(minutes):.1f}; {sum(minutes) / 60:.1f} h of run time in all")  # fmt: skip

    def cell(self, objective: str, tau: float) -> list[RunRecord]:
        return [r for r in self.records if r.objective == objective and r.tau == tau]

    def selection_score(self, objective: str, tau: float) -> Optional[float]:
        runs = self.cell(objective, tau)
        if not runs:
            return None
        return statistics.fmean((r.val_score if self.by_val else r.avg) for r in runs)

    def best_tau(self, objective: str) -> Optional[float]:
        scored = [(s, t) for t in self.taus if (s := self.selection_score(objective, t)) is not None]
        return max(scored)[1] if scored else None

    def gain(self, objective: str, tau: float) -> Optional[float]:
        base, here = self.cell(objective, 1.0), self.cell(objective, tau)
        if not base or not here:
            return None
        return statistics.fmean(r.avg for r in here) - statistics.fmean(r.avg for r in base)

    # -- sections -----------------------------------------------------------------------------

    def table1(self) -> list[str]:
        criterion = "mean validation ROUGE-L" if self.by_val else "mean test average ROUGE-L (no validation score)"
        lines = [
            "## Table 1: each objective at τ = 1 and at its best τ",
            "",
            f"ROUGE-L, mean ± std over training seeds; best τ chosen by {criterion}.",
            "",
            "| objective | τ | " + " | ".join(self.benchmarks) + " | avg |",
            "|---|---|" + "---:|" * (len(self.benchmarks) + 1),
        ]
        for objective in self.objectives:
            best = self.best_tau(objective)
            for tau, label in ((1.0, "1"), (best, f"{best:g} (best)" if best is not None else "n/a")):
                runs = self.cell(objective, tau) if tau is not None else []
                cells = [_fmt([r.scores[b] for r in runs]) for b in self.benchmarks]
                lines.append(f"| {objective} | {label} | " + " | ".join(cells) + f" | {_fmt([r.avg for r in runs])} |")
        return lines

    def grid_table(self) -> list[str]:
        lines = [
            "## Average ROUGE-L for every objective × τ",
            "",
            "| objective | " + " | ".join(f"τ={t:g}" for t in self.taus) + " |",
            "|---|" + "---:|" * len(self.taus),
        ]
        for objective in self.objectives:
            cells = [_fmt([r.avg for r in self.cell(objective, t)]) for t in self.taus]
            lines.append(f"| {objective} | " + " | ".join(cells) + " |")
        return lines

    def gain_table(self) -> list[str]:
        lines = ["## Gain over τ = 1 (Figure 2 as numbers)", ""]
        if 1.0 not in self.taus:
            return lines + ["The sweep has no τ = 1 runs, so there is no baseline to compare with."]
        lines += [
            "| objective | " + " | ".join(f"τ={t:g}" for t in self.taus) + " |",
            "|---|" + "---:|" * len(self.taus),
        ]
        for objective in self.objectives:
            cells = ["n/a" if (g := self.gain(objective, t)) is None else f"{g:+.2f}" for t in self.taus]
            lines.append(f"| {objective} | " + " | ".join(cells) + " |")
        return lines

    def diagnostics_table(self) -> list[str]:
        lines = [
            "## KD diagnostics against τ",
            "",
            "Teacher entropy H(p) and non-target mass 1 − p_t at τ, student–teacher top-1 agreement, and the KD term's",
            "gradient on the student's target logit |∂d/∂z_t| and on its non-target logits ‖∂d/∂z_k≠t‖₂ (per token,",
            "mean over tokens), averaged over each run's logged training steps; mean ± std over seeds.",
            *self.diagnostics_range(),
            "",
            "| objective | τ | teacher entropy | non-target mass | top-1 agreement | ‖∇ target‖ | ‖∇ non-target‖ |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for objective in self.objectives:
            for tau in self.taus:
                runs = self.cell(objective, tau)
                if not runs:
                    continue
                cells = [_fmt_diag([r.diagnostics[n] for r in runs if n in r.diagnostics]) for n in DIAGNOSTICS]
                lines.append(f"| {objective} | {tau:g} | " + " | ".join(cells) + " |")
        return lines

    def quality_table(self) -> list[str]:
        """Diversity and calibration for every objective × τ (mean ± std over training seeds); empty when no run's
        evaluation measured them."""
        present = [key for key in QUALITY_COLUMNS if any(key in r.quality for r in self.records)]
        if not present:
            return []
        lines = [
            "## Diversity and calibration against τ",
            "",
            "Distinct-n over each model's responses (mean over sampling seeds), Self-BLEU across the sampling seeds'",
            "responses to each prompt, and on the reference responses the student's mean token entropy (nats) and",
            "expected calibration error; each averaged over the benchmarks, then mean ± std over training seeds.",
            "",
            "| objective | τ | " + " | ".join(self.quality_header(key) for key in present) + " |",
            "|---|---:|" + "---:|" * len(present),
        ]
        for objective in self.objectives:
            for tau in self.taus:
                runs = self.cell(objective, tau)
                cells = [_fmt_quality(key, [r.quality[key] for r in runs if key in r.quality]) for key in present]
                lines.append(f"| {objective} | {tau:g} | " + " | ".join(cells) + " |")
        return lines

    def quality_header(self, key: str) -> str:
        return quality_header(key, self.plan.evaluation.self_bleu_order)

    def variants_table(self) -> list[str]:
        """Each objective's best constant τ (and the constant τ the variants start from) against its τ schedules and
        rules, the runs of the ``--variants`` sweeps: average ROUGE-L, then diversity and calibration, mean ± std
        over training seeds."""
        if not self.variants:
            return []
        keys = [key for key in SUMMARY_QUALITY if any(key in r.quality for r in self.records)]
        lines = [
            "## τ schedules and rules against a constant τ",
            "",
            "Each variant is a regime overlay (`configs/regimes/tau_*.yaml`) whose τ is the sweep's τ (a schedule's",
            "start, a rule's base); the constant rows are this sweep's runs. Average ROUGE-L over the benchmarks and",
            "diversity and calibration averaged over them, mean ± std over training seeds.",
            "",
            "| objective | τ | variant | avg ROUGE-L | " + " | ".join(self.quality_header(k) for k in keys) + " |",
            "|---|---:|---|---:|" + "---:|" * len(keys),
        ]

        def row(objective: str, tau: float, variant: str, runs: list[RunRecord]) -> str:
            cells = [_fmt_quality(key, [r.quality[key] for r in runs if key in r.quality]) for key in keys]
            return f"| {objective} | {tau:g} | {variant} | {_fmt([r.avg for r in runs])} | " + " | ".join(cells) + " |"

        for objective in dict.fromkeys(r.name for r in self.variants):
            best = self.best_tau(objective)
            taus = sorted({r.tau for r in self.variants if r.name == objective})
            constant = ([best] if best is not None else []) + [t for t in taus if t != best]
            for tau in constant:
                variant = "constant (best τ)" if tau == best else "constant"
                lines.append(row(objective, tau, variant, self.cell(objective, tau)))
            for regime in dict.fromkeys(r.regime for r in self.variants if r.name == objective):
                for tau in taus:
                    runs = [r for r in self.variants if r.name == objective and r.regime == regime and r.tau == tau]
                    if runs:
                        lines.append(row(objective, tau, str(regime), runs))
        return lines

    def diagnostics_range(self) -> list[str]:
        """One measured sentence: the teacher's entropy and non-target mass at the lowest and the highest τ."""

        def mean(name: str, tau: float) -> Optional[float]:
            values = [r.diagnostics[name] for o in self.objectives for r in self.cell(o, tau) if name in r.diagnostics]
            return sum(values) / len(values) if values else None

        low, high = min(self.taus), max(self.taus)
        found = {n: (mean(n, low), mean(n, high)) for n in ("teacher_entropy", "teacher_nontarget_mass")}
        if low == high or any(v is None for pair in found.values() for v in pair):
            return []
        (e0, e1), (m0, m1) = found["teacher_entropy"], found["teacher_nontarget_mass"]
        return [
            f"Measured here: from τ = {low:g} to τ = {high:g} the teacher's entropy goes from {e0:.2f} to {e1:.2f} "
            f"nats and its non-target mass from {m0:.2f} to {m1:.2f} (means over objectives and seeds)."
        ]

    # -- learning curves ------------------------------------------------------------------------

    def at_point(self, point: int | str) -> "Report":
        """This report on the evaluations at one point of the learning curves: a step of ``evaluation.steps``, or
        ``END`` (the usual evaluation)."""
        records = self.records if point == END else self.steps.records.get(int(point), [])
        return Report(self.out, self.plan, records, [])

    def curve_points(self) -> list[int | str]:
        """The evaluation points of the learning curves, in order (none when no run has a step evaluation)."""
        if not any(self.steps.records.values()):
            return []
        return [*self.plan.evaluation.steps, END]

    def end_step(self, objective: str, tau: float) -> Optional[float]:
        """Where the usual evaluation sits on a curve: the mean over the cell's runs of the fit's last step."""
        steps = [r.step for r in self.cell(objective, tau) if r.step is not None]
        return statistics.fmean(steps) if steps else None

    def curve(self, objective: str, tau: float, key: str) -> list[tuple[int | str, float, float, float, int]]:
        """(point, step, mean, std over training seeds, runs) of ``key`` (``CURVE_METRICS``) at each evaluation point
        where the cell (objective, τ) measured it."""
        points = []
        for point in self.curve_points():
            values = [v for r in self.at_point(point).cell(objective, tau) if (v := r.metric(key)) is not None]
            step = self.end_step(objective, tau) if point == END else point
            if values and step is not None:
                points.append((point, float(step), *mean_std(values), len(values)))
        return points

    def curves_csv(self) -> str:
        """``learning_curves.csv``: one row per objective, τ, evaluation point and metric (what the figures plot)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["objective", "tau", "point", "step", "metric", "mean", "std", "runs"])
        for objective in self.objectives:
            for tau in self.taus:
                for key in CURVE_METRICS:
                    for point, step, mean, std, runs in self.curve(objective, tau, key):
                        writer.writerow([objective, f"{tau:g}", point, f"{step:g}", key, repr(mean), repr(std), runs])
        return buffer.getvalue()

    def step_tables(self) -> list[str]:
        """For each evaluation point: objective × τ → average ROUGE-L and diversity and calibration (mean ± std over
        training seeds), the runs that did not reach it, and the ordering of (objective, τ) by ROUGE-L."""
        points = self.curve_points()
        if not points:
            return []
        lines = [
            "## Learning curves: each evaluation point",
            "",
            f"Each run's weights at steps {', '.join(map(str, self.plan.evaluation.steps))} of its fit, and at the end "
            "(the usual evaluation: its best checkpoint, at the fit's last step), evaluated alike; average ROUGE-L "
            "over the benchmarks, diversity and calibration averaged over them, mean ± std over training seeds.",
        ]
        lines += ["", *self.curve_table()]
        for point in points:
            lines += ["", *self.point_table(point)]
        return lines

    def curve_table(self) -> list[str]:
        """Objective × τ → average ROUGE-L at every evaluation point, one column each (mean ± std over seeds)."""
        points = self.curve_points()
        ends = [s for o in self.objectives for t in self.taus if (s := self.end_step(o, t)) is not None]
        end = f"end (step {ends[0]:g})" if len(set(ends)) == 1 else "end (each fit's last step)"
        header = [end if point == END else f"step {point}" for point in points]
        lines = [
            "### Average ROUGE-L at each point",
            "",
            "| objective | τ | " + " | ".join(header) + " |",
            "|---|---:|" + "---:|" * len(points),
        ]
        at = [self.at_point(point) for point in points]
        for objective in self.objectives:
            for tau in self.taus:
                cells = [_fmt([r.avg for r in here.cell(objective, tau)]) for here in at]
                lines.append(f"| {objective} | {tau:g} | " + " | ".join(cells) + " |")
        return lines

    def point_table(self, point: int | str) -> list[str]:
        here = self.at_point(point)
        keys = [key for key in QUALITY_COLUMNS if any(key in r.quality for r in here.records)]
        title = "the end" if point == END else f"step {point}"
        lines = [
            f"### At {title}",
            "",
            "| objective | τ | avg ROUGE-L | " + " | ".join(self.quality_header(k) for k in keys) + " |",
            "|---|---:|---:|" + "---:|" * len(keys),
        ]
        missing = [] if point == END else self.steps.missing.get(int(point), [])
        for objective in self.objectives:
            for tau in self.taus:
                runs = here.cell(objective, tau)
                unreached = any(s.label == objective and s.tau == tau and why.startswith("not reached")
                                for s, why in missing)  # fmt: skip
                average = _fmt([r.avg for r in runs]) if runs or not unreached else "not reached"
                cells = [_fmt_quality(key, [r.quality[key] for r in runs if key in r.quality]) for key in keys]
                lines.append(f"| {objective} | {tau:g} | {average} | " + " | ".join(cells) + " |")
        lines += ["", *[f"- {spec.run_id}: {why}" for spec, why in missing]]
        lines.append(f"Ordering by average ROUGE-L: {here.ordering()}.")
        return lines

    def ordering(self) -> str:
        """(objective, τ) cells from the highest mean average ROUGE-L down, each with its mean ± std."""
        cells = [(mean_std([r.avg for r in runs]), o, t) for o in self.objectives for t in self.taus
                 if (runs := self.cell(o, t))]  # fmt: skip
        cells.sort(key=lambda cell: -cell[0][0])
        return "; ".join(f"{i}. {o} τ = {t:g} ({m:.2f} ± {sd:.2f})" for i, ((m, sd), o, t) in enumerate(cells, 1))

    def curve_figures(self, plt: Any, out: Path) -> dict[str, Path]:
        """One figure per objective: each metric of ``CURVE_METRICS`` against steps (log axis), one line per τ, a band
        of ± one std over training seeds."""
        paths: dict[str, Path] = {}
        if not self.curve_points():
            return paths
        for objective in self.objectives:
            measured = {key: {t: c for t in self.taus if (c := self.curve(objective, t, key))} for key in CURVE_METRICS}
            measured = {key: lines for key, lines in measured.items() if lines}
            if not measured:
                continue
            fig, axes = plt.subplots(1, len(measured), figsize=(4.5 * len(measured), 4), squeeze=False)
            for ax, (key, lines) in zip(axes[0], measured.items()):
                for tau, points in lines.items():
                    _curve_with_band(ax, points, f"τ = {tau:g}")
                _step_axis(ax, [p[1] for points in lines.values() for p in points])
                ax.set_title(self.quality_header(key) if key in QUALITY_COLUMNS else CURVE_METRICS[key])
                ax.grid(alpha=0.3)
            axes[0][0].legend(fontsize=7)
            fig.suptitle(f"{objective}: learning curves (band: ± std over seeds)")
            fig.tight_layout()
            paths[f"curves_{objective}"] = out / f"learning_curves_{re.sub(r'[^A-Za-z0-9_.-]+', '_', objective)}.png"
            _save_figure(fig, paths[f"curves_{objective}"])
            plt.close(fig)
        by_tau = self.curves_by_tau_figure(plt, out / "learning_curves_by_tau.png")
        if by_tau is not None:
            paths["curves_by_tau"] = by_tau
        return paths

    def curves_by_tau_figure(self, plt: Any, path: Path) -> Optional[Path]:
        """Average ROUGE-L against steps, one panel per τ and one line per objective (± one std over seeds): the
        ordering of the objectives at each τ along training, and whether it crosses."""
        panels = {t: {o: c for o in self.objectives if (c := self.curve(o, t, "avg"))} for t in self.taus}
        panels = {tau: lines for tau, lines in panels.items() if lines}
        if not panels:
            return None
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False, sharey=True)
        for ax, (tau, lines) in zip(axes[0], panels.items()):
            for objective, points in lines.items():
                _curve_with_band(ax, points, objective)
            _step_axis(ax, [p[1] for points in lines.values() for p in points])
            ax.set_title(f"τ = {tau:g}")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(CURVE_METRICS["avg"])
        axes[0][0].legend(fontsize=7)
        fig.suptitle("each τ: objectives along training (± std)")
        fig.tight_layout()
        _save_figure(fig, path)
        plt.close(fig)
        return path

    # -- figures --------------------------------------------------------------------------------

    def figures(self, out: Path) -> dict[str, Path]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ConfigError("the report's figures need matplotlib: pip install 'lit_kd[plots]'") from err
        paths = {}

        fig, ax = plt.subplots(figsize=(6, 4))
        for objective in [o for o in ("fkl", "rkl") if o in self.objectives] or self.objectives:
            taus = [t for t in self.taus if self.cell(objective, t)]
            stats = [mean_std([r.avg for r in self.cell(objective, t)]) for t in taus]
            ax.errorbar(
                taus, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=4, label=objective.upper()
            )
        ax.set_xlabel("distillation temperature τ")
        ax.set_ylabel("average ROUGE-L")
        ax.set_title("Figure 1: FKL vs RKL against τ (error bars: std over seeds)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths["figure1"] = out / "figure1_fkl_rkl.png"
        _save_figure(fig, paths["figure1"])
        plt.close(fig)

        if 1.0 in self.taus:
            gains = [[self.gain(o, t) for t in self.taus] for o in self.objectives]
            values = [[g if g is not None else float("nan") for g in row] for row in gains]
            fig, ax = plt.subplots(figsize=(1.2 * len(self.taus) + 2, 0.6 * len(self.objectives) + 1.5))
            finite = [abs(v) for row in values for v in row if v == v]
            bound = max(finite) if finite and max(finite) > 0 else 1.0
            image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
            ax.set_xticks(range(len(self.taus)), [f"{t:g}" for t in self.taus])
            ax.set_yticks(range(len(self.objectives)), self.objectives)
            for i, row in enumerate(values):
                for j, v in enumerate(row):
                    label = "n/a" if v != v else f"{v:+.1f}"
                    color = "white" if v == v and abs(v) > 0.6 * bound else "black"  # legible on dark cells
                    ax.text(j, i, label, ha="center", va="center", fontsize=8, color=color)
            ax.set_xlabel("τ")
            ax.set_title("ROUGE-L gain over τ = 1")
            fig.colorbar(image, ax=ax)
            fig.tight_layout()
            paths["heatmap"] = out / "heatmap_gain.png"
            _save_figure(fig, paths["heatmap"])
            plt.close(fig)

        panels = {
            "teacher_entropy": "teacher entropy H(p) at τ",
            "teacher_nontarget_mass": "teacher non-target mass at τ",
            "kd_grad_target_norm": "KD gradient on the target logit",
            "kd_grad_nontarget_norm": "KD gradient on the non-target logits",
        }
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
        for ax, (name, title) in zip(axes, panels.items()):
            plotted_values = []
            for objective in self.objectives:
                taus = [t for t in self.taus if any(name in r.diagnostics for r in self.cell(objective, t))]
                means = [
                    statistics.fmean(r.diagnostics[name] for r in self.cell(objective, t) if name in r.diagnostics)
                    for t in taus
                ]
                ax.plot(taus, means, marker="o", label=objective)
                plotted_values += means
            if name.startswith("kd_grad") and plotted_values and min(plotted_values) > 0:
                ax.set_yscale("log")  # gradients shrink by orders of magnitude as τ grows
            ax.set_xlabel("τ")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        paths["diagnostics"] = out / "diagnostics_vs_tau.png"
        _save_figure(fig, paths["diagnostics"])
        plt.close(fig)

        plotted = {key: self.quality_means(key) for key in SUMMARY_QUALITY}
        measured = {key: means for key, means in plotted.items() if means}
        if measured:
            fig, axes = plt.subplots(1, len(measured), figsize=(4.5 * len(measured), 4), squeeze=False)
            for ax, (key, means) in zip(axes[0], measured.items()):
                for objective, points in means.items():
                    ax.plot([t for t, _ in points], [m for _, m in points], marker="o", label=objective)
                ax.set_xlabel("τ")
                ax.set_title(self.quality_header(key))
                ax.grid(alpha=0.3)
            axes[0][0].legend(fontsize=7)
            fig.tight_layout()
            paths["quality"] = out / "diversity_calibration_vs_tau.png"
            _save_figure(fig, paths["quality"])
            plt.close(fig)
        paths.update(self.curve_figures(plt, out))
        return paths

    def quality_means(self, key: str) -> dict[str, list[tuple[float, float]]]:
        """objective → [(τ, mean over training seeds of ``key``)] where measured."""
        means: dict[str, list[tuple[float, float]]] = {}
        for objective in self.objectives:
            for tau in self.taus:
                values = [r.quality[key] for r in self.cell(objective, tau) if key in r.quality]
                if values:
                    means.setdefault(objective, []).append((tau, statistics.fmean(values)))
        return means

    def crossover(self) -> list[str]:
        """Where FKL overtakes RKL on the mean average ROUGE-L across the τ grid (the paper's claim), measured."""
        if not {"fkl", "rkl"} <= set(self.objectives):
            return []
        points = [(t, mean_std([r.avg for r in self.cell("fkl", t)]), mean_std([r.avg for r in self.cell("rkl", t)]))
                  for t in self.taus if self.cell("fkl", t) and self.cell("rkl", t)]  # fmt: skip
        if not points:
            return []
        ahead = [(t, "FKL" if f[0] > r[0] else "RKL" if r[0] > f[0] else "tie") for t, f, r in points]
        listing = "; ".join(f"τ = {t:g}: FKL {f[0]:.2f} ± {f[1]:.2f} vs RKL {r[0]:.2f} ± {r[1]:.2f}"
                            for t, f, r in points)  # fmt: skip
        first = ahead[0][1]
        switch = next(((t, who) for t, who in ahead[1:] if who != first and who != "tie"), None)
        if switch is None:
            verdict = f"no crossover in this grid: {first} is ahead (or level) at every τ"
        else:
            verdict = f"{first} is ahead at τ = {ahead[0][0]:g} and {switch[1]} from τ = {switch[0]:g} (the crossover)"
        return ["## FKL vs RKL across τ", "", f"{verdict}. Average ROUGE-L, mean ± std over training seeds: {listing}."]

    def against_the_paper(self) -> list[str]:
        """The paper's claims (Luong & Chen 2026) set against this sweep: FKL ahead of RKL when each has its tuned
        τ, and τ lifting Sym-KL, JS, SFKL, SRKL and AKL over τ = 1; each stated as measured, with its spread, and
        whether its direction is the paper's."""
        lines = []
        best = {o: self.best_tau(o) for o in ("fkl", "rkl") if o in self.objectives}
        if len(best) == 2 and None not in best.values():
            (f, f_std), (r, r_std) = (mean_std([x.avg for x in self.cell(o, best[o])]) for o in ("fkl", "rkl"))
            direction = "FKL ahead, the paper's direction" if f > r else "RKL ahead or level, not the paper's direction"
            spread = "within" if abs(f - r) <= max(f_std, r_std) else "beyond"
            lines.append(
                f"- FKL at its best τ = {best['fkl']:g} vs RKL at its best τ = {best['rkl']:g}: {f:.2f} ± {f_std:.2f} "
                f"vs {r:.2f} ± {r_std:.2f} ({direction}; the difference {f - r:+.2f} is {spread} one std)."
            )
        family = [o for o in ("sym_kl", "js", "sfkl", "srkl", "akl") if o in self.objectives]
        gains = {o: (t, self.gain(o, t)) for o in family if (t := self.best_tau(o)) is not None}
        gains = {o: (t, g) for o, (t, g) in gains.items() if g is not None}
        if gains:
            lifted = [o for o, (t, g) in gains.items() if t != 1.0 and g > 0]
            listing = ", ".join(f"{o} {g:+.2f} at τ = {t:g}" for o, (t, g) in gains.items())
            lines.append(
                f"- τ lifts {len(lifted)} of {len(gains)} of Sym-KL, JS, SFKL, SRKL and AKL over τ = 1 at their best "
                f"τ (the paper: all of them): {listing}."
            )
        return ["## Against the paper", "", *lines] if lines else []

    def markdown(self, figures: dict[str, Path]) -> str:
        done, evaluation = len(self.records), self.plan.evaluation
        lines = [
            f"# lit_kd sweep report: {self.out}",
            "",
            f"- base configs: {', '.join(self.plan.base)}",
            f"- objectives: {', '.join(self.objectives)}; τ: {', '.join(f'{t:g}' for t in self.taus)}; "
            f"training seeds: {', '.join(str(s) for s in sorted({r.seed for r in self.plan.runs}))}",
            f"- evaluation: {', '.join(evaluation.benchmarks)}"
            + (f", first {evaluation.max_examples} examples each" if evaluation.max_examples else "")
            + f", {evaluation.max_new_tokens} new tokens, sampling at temperature 1",
            f"- runs: {done} of {len(self.plan.runs)} done" + self.run_time(),
        ]
        lines += [f"  - {p}" for p in self.problems]
        lines += ["", *self.table1(), "", *self.grid_table(), "", *self.gain_table(), ""]
        if "figure1" in figures:
            lines += ["## Figure 1", "", f"![FKL vs RKL against τ]({figures['figure1'].name})", ""]
        if "heatmap" in figures:
            lines += ["## Figure 2", "", f"![ROUGE-L gain over τ = 1]({figures['heatmap'].name})", ""]
        crossover = self.crossover()
        if crossover:
            lines += [*crossover, ""]
        paper = self.against_the_paper()
        if paper:
            lines += [*paper, ""]
        quality = self.quality_table()
        if quality:
            lines += [*quality, ""]
        if "quality" in figures:
            lines += [f"![diversity and calibration against τ]({figures['quality'].name})", ""]
        variants = self.variants_table()
        if variants:
            lines += [*variants, ""]
        lines += [*self.diagnostics_table(), ""]
        if "diagnostics" in figures:
            lines += [f"![diagnostics against τ]({figures['diagnostics'].name})", ""]
        curves = self.step_tables()
        if curves:
            lines += [*curves, "", "Learning curves (the numbers: `learning_curves.csv`):", ""]
            lines += [f"![{name}]({path.name})" for name, path in figures.items() if name.startswith("curves_")]
            lines.append("")
        return "\n".join(lines)


def file_digest(path: str) -> str:
    """A base config's sha256 (its path where it is gone): sweeps planned from two checkouts compare equal."""
    return sha256(Path(path)) if Path(path).is_file() else path


def variant_records(plan: SweepPlan, variant_dirs: list[str]) -> tuple[list[RunRecord], list[str]]:
    """The finished runs of sweeps of τ variants, checked comparable with ``plan``: base configs of the same content,
    the same fit arguments and evaluation, and every run in a regime (the variant)."""
    records, problems = [], []
    if variant_dirs and any(spec.regime is not None for spec in plan.runs):
        raise ConfigError("--variants: the sweep compared with must run the base configs' own regime (no --regimes)")
    for directory in variant_dirs:
        variant_plan = load_plan(Path(directory))
        ours = {name: layer.sha256 for name, layer in plan.objective_configs.items()}
        differing = [name for name, layer in variant_plan.objective_configs.items() if ours.get(name) != layer.sha256]
        if differing:  # the variants may run fewer objectives than the sweep, each with the sweep's own config
            raise ConfigError(
                f"--variants {directory}: its objective configs differ from the sweep's ({', '.join(differing)})"
            )
        if [file_digest(p) for p in variant_plan.base] != [file_digest(p) for p in plan.base]:
            raise ConfigError(f"--variants {directory}: its base configs differ from the sweep's ({variant_plan.base})")
        for name in ("fit_args", "evaluation"):
            if getattr(variant_plan, name) != getattr(plan, name):
                raise ConfigError(
                    f"--variants {directory}: its {name} differs from the sweep's, so its runs are not comparable"
                )
        if any(spec.regime is None for spec in variant_plan.runs):
            raise ConfigError(f"--variants {directory}: a variant sweep runs every run in a regime (--regimes)")
        found, missing = collect(Path(directory), variant_plan)
        records += found
        problems += [f"{directory}: {line}" for line in missing]
    return records, problems


def write_report(sweep_dir: str, variant_dirs: Optional[list[str]] = None) -> tuple[Path, dict[str, Path]]:
    """Write ``report.md`` and its figures into the sweep directory; returns the report's path and the
    figures written (the heatmap only when the sweep has τ = 1 runs). ``variant_dirs``: sweeps of τ schedules and
    rules (regimes) on the same base, compared with the constant τ."""
    out = Path(sweep_dir)
    plan = load_plan(out)
    variants, variant_problems = variant_records(plan, list(variant_dirs or []))
    records, problems = collect(out, plan)
    if not records:
        first = f"; the first: {problems[0]}" if problems else ""
        raise ConfigError(f"{sweep_dir}: no finished run to report on ({len(problems)} not done{first})")
    report = Report(out, plan, records, problems + variant_problems, variants, collect_steps(out, plan))
    figures = report.figures(out)
    if report.curve_points():
        atomic_write_text(out / "learning_curves.csv", report.curves_csv())
    return atomic_write_text(out / "report.md", report.markdown(figures)), figures
