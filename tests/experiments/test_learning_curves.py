"""Learning curves (``evaluation.steps``): each run's weights saved at those steps during its fit, each evaluated into
its own directory, resumed between step evaluations, refused when the steps are malformed or beyond the run, and
reported per step with numbers that match the evaluation files."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.cli import main
from lit_kd.errors import ConfigError
from lit_kd.experiments.records import FitSummary, RunStatus, StepEval, SweepEval
from lit_kd.experiments.report import read_evaluation
from lit_kd.experiments.sweep import Sweep
from lit_kd.training import StepCheckpoints, build
from tests.conftest import ROOT
from tests.experiments.test_sweep import evaluation, tiny_base


def curves_base(tmp_path: Path, batches: int) -> Path:
    """The sweep tests' tiny base with ``batches`` optimizer steps in its one epoch."""
    base = tiny_base(tmp_path)
    config = yaml.safe_load(base.read_text())
    config["trainer"]["limit_train_batches"] = batches
    base.write_text(yaml.safe_dump(config))
    return base


def test_step_evaluations_resume_between_steps_and_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    settings = evaluation(tmp_path)
    settings.steps = [2, 4]
    sweep = Sweep.create(str(tmp_path / "s"), [str(curves_base(tmp_path, 6))], ["fkl"], [1.0], [10], settings)
    run = tmp_path / "s" / "fkl" / "tau_1" / "seed_10"

    real_call = Sweep._call
    calls: list[list[str]] = []

    def killed_before_step_4(self, command, log):  # the sweep is killed once step 2's evaluation is recorded
        if "evaluate" in command and command[command.index("--ckpt") + 1].endswith("step-4.ckpt"):
            raise KeyboardInterrupt
        return real_call(self, command, log)

    monkeypatch.setattr(Sweep, "_call", killed_before_step_4)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_one(sweep.runs[0])
    status = sweep.status(sweep.runs[0])
    assert status.state == "running" and status.step_evals == [StepEval(2, str(run / "eval-step-2"))]
    checkpoints = Path(status.fit_dir) / "checkpoints"
    for step in (2, 4):  # the weights at exactly those optimizer steps, without the optimizer's state
        saved = torch.load(checkpoints / f"step-{step}.ckpt", map_location="cpu", weights_only=False)
        assert saved["global_step"] == step and "optimizer_states" not in saved and saved["state_dict"]
    assert (run / "eval-step-2" / "results.json").is_file() and not (run / "eval-step-4").exists()

    def recorded(self, command, log):
        calls.append(command)
        return real_call(self, command, log)

    monkeypatch.setattr(Sweep, "_call", recorded)
    again = Sweep.load(str(tmp_path / "s"))
    again.keep_last_checkpoints = False  # step checkpoints go once evaluated, with last.ckpt
    done = again.run_one(again.runs[0])
    assert done.state == "done" and done.fit_dir == status.fit_dir
    assert [c[3] for c in calls] == ["evaluate", "evaluate"]  # no fit, and step 2 not evaluated again
    assert [Path(c[c.index("--ckpt") + 1]).name for c in calls] == ["step-4.ckpt", Path(done.checkpoint).name]
    assert done.step_evals == [StepEval(2, str(run / "eval-step-2")), StepEval(4, str(run / "eval-step-4"))]
    assert (run / "eval-step-4" / "results.json").is_file() and (run / "eval" / "results.json").is_file()
    assert [p.name for p in checkpoints.iterdir()] == [Path(done.checkpoint).name]

    capsys.readouterr()
    main(["report", str(tmp_path / "s")])
    assert "learning_curves_fkl.png" in capsys.readouterr().out
    assert (tmp_path / "s" / "learning_curves_fkl.png").stat().st_size > 1000
    report = (tmp_path / "s" / "report.md").read_text()
    rows = list(csv.DictReader((tmp_path / "s" / "learning_curves.csv").open()))
    for point, eval_dir, step in (("2", "eval-step-2", 2), ("4", "eval-step-4", 4), ("end", "eval", 6)):
        scores, _ = read_evaluation(run / eval_dir)
        (row,) = [r for r in rows if r["point"] == point and r["metric"] == "avg"]
        assert float(row["mean"]) == pytest.approx(statistics.fmean(scores.values())) and float(row["step"]) == step
        title = "the end" if point == "end" else f"step {point}"
        table = report.split(f"### At {title}")[1].split("###")[0]
        assert f"| fkl | 1 | {statistics.fmean(scores.values()):.2f} ± 0.00 |" in table
        assert f"1. fkl τ = 1 ({statistics.fmean(scores.values()):.2f} ± 0.00)" in table


def test_steps_are_checked_when_planned_and_before_training(tmp_path, monkeypatch, capsys):
    for steps, problem in (([0], "positive whole numbers"), ([4, 4], "strictly increasing"), ([8, 2], "strictly"),
                           ([1.5], "list of int"), ("16", "list of int")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"--evaluation.steps must .*{problem}"):
            SweepEval(benchmarks=["dolly"], steps=steps)
    with pytest.raises(SystemExit):  # the command line: one error line naming the option
        main(["sweep", "--base", "[x.yaml]", "--out", str(tmp_path / "s"), "--evaluation.steps", "[64,16]"])
    assert "--evaluation.steps must be strictly increasing, got [64, 16]" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

    monkeypatch.chdir(ROOT)  # a step beyond the run's 3 optimizer steps: refused before the first one
    callback = {"class_path": "lit_kd.training.StepCheckpoints", "init_args": {"steps": [2, 5]}}
    logs = tmp_path / "logs"
    run = build(["--config", str(curves_base(tmp_path, 3)), "--trainer.logger.init_args.save_dir", str(logs),
                 "--trainer.callbacks+=" + json.dumps(callback)])  # fmt: skip
    with pytest.raises(ConfigError, match="step 5 is beyond the 3 optimizer steps this run trains"):
        run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.trainer.global_step == 0 and not list(logs.rglob("step-*.ckpt"))
    with pytest.raises(ConfigError, match="StepCheckpoints.steps must be strictly increasing"):
        StepCheckpoints([3, 2])


def write_results(eval_dir: Path, rouge: float, self_bleu: float) -> None:
    """An evaluation's results.json with one benchmark, two sampling seeds around ``rouge``."""
    eval_dir.mkdir(parents=True)
    result = {"per_seed": {"dolly": {"1": rouge - 1, "2": rouge + 1}}, "self_bleu": {"dolly": self_bleu}}
    (eval_dir / "results.json").write_text(json.dumps({"results": [result]}))


def test_the_report_aggregates_each_step_over_seeds_and_says_what_was_not_reached(tmp_path):
    settings = evaluation(tmp_path)
    settings.steps = [16, 64]
    sweep = Sweep.create(str(tmp_path / "s"), [str(tiny_base(tmp_path))], ["fkl", "rkl"], [1.0, 2.0], [10, 20],
                         settings)  # fmt: skip
    values = {}  # (objective, τ, seed, point) → ROUGE-L, Self-BLEU; fkl τ = 2 seed 20 stopped at step 40
    for spec in sweep.runs:
        run = sweep.run_dir(spec)
        last = 40 if (spec.objective, spec.tau, spec.seed) == ("fkl", 2.0, 20) else 100
        points = []
        for step in settings.steps + [None]:
            if step is not None and step > last:
                points.append(StepEval(step))
                continue
            rouge = 10 * spec.tau + (1 if spec.objective == "rkl" else 0) + spec.seed / 10 + (step or last) / 100
            values[spec.objective, spec.tau, spec.seed, step or "end"] = rouge, rouge / 2
            write_results(run / (f"eval-step-{step}" if step else "eval"), rouge, rouge / 2)
            if step:
                points.append(StepEval(step, str(run / f"eval-step-{step}")))
        (run / "fit").mkdir()
        summary = FitSummary(last, 1, str(run / "best.ckpt"), 0.5, "val/rougeL", None, {})
        RunStatus("done", spec, fit_dir=str(run / "fit"), checkpoint=summary.checkpoint, fit_summary=summary,
                  eval_dir=str(run / "eval"), minutes=1.0, step_evals=points).write(run / "status.json")  # fmt: skip

    main(["report", str(tmp_path / "s")])
    report = (tmp_path / "s" / "report.md").read_text()
    step_64 = report.split("### At step 64")[1].split("###")[0]
    assert "- fkl/tau_2/seed_20: not reached (its fit ended at step 40)" in step_64
    fkl_2 = values["fkl", 2.0, 10, 64][0]  # only seed 10 reached step 64
    assert f"| fkl | 2 | {fkl_2:.2f} ± 0.00 |" in step_64
    rkl_2 = [values["rkl", 2.0, seed, 64][0] for seed in (10, 20)]
    assert f"| rkl | 2 | {statistics.fmean(rkl_2):.2f} ± {statistics.stdev(rkl_2):.2f} |" in step_64
    assert "Ordering by average ROUGE-L: 1. rkl τ = 2" in step_64 and "4. fkl τ = 1" in step_64
    rows = list(csv.DictReader((tmp_path / "s" / "learning_curves.csv").open()))
    checked = ((("rkl", 1.0, "16", "avg"), 0), (("fkl", 1.0, "end", "self_bleu"), 1))  # index: ROUGE-L, Self-BLEU
    for (objective, tau, point, metric), index in checked:
        key = (objective, f"{tau:g}", point, metric)
        (row,) = [r for r in rows if (r["objective"], r["tau"], r["point"], r["metric"]) == key]
        expected = [values[objective, tau, seed, point if point == "end" else int(point)][index] for seed in (10, 20)]
        assert float(row["mean"]) == pytest.approx(statistics.fmean(expected))
        assert float(row["std"]) == pytest.approx(statistics.stdev(expected)) and row["runs"] == "2"
    ends = [r for r in rows if (r["objective"], r["tau"], r["point"], r["metric"]) == ("fkl", "2", "end", "avg")]
    assert float(ends[0]["step"]) == 70  # the mean of the two fits' last steps (40 and 100)
    assert not [r for r in rows if (r["objective"], r["tau"], r["point"]) == ("fkl", "2", "64") and r["runs"] != "1"]
    summary = report.split("### Average ROUGE-L at each point")[1].split("###")[0]
    assert "| objective | τ | step 16 | step 64 | end (each fit's last step) |" in summary  # fits ended at 40 or 100
    def cell(objective: str, tau: float, point: int | str, seeds: tuple[int, ...] = (10, 20)) -> str:
        scores = [values[objective, tau, seed, point][0] for seed in seeds]
        return f"{statistics.fmean(scores):.2f} ± {statistics.stdev(scores) if len(scores) > 1 else 0:.2f}"

    assert f"| rkl | 2 | {cell('rkl', 2.0, 16)} | {cell('rkl', 2.0, 64)} | {cell('rkl', 2.0, 'end')} |" in summary
    assert f"| fkl | 2 | {cell('fkl', 2.0, 16)} | {cell('fkl', 2.0, 64, (10,))} |" in summary  # seed 20 stopped
    for figure in ("fkl", "rkl", "by_tau"):
        assert (tmp_path / "s" / f"learning_curves_{figure}.png").stat().st_size > 1000
        assert f"(learning_curves_{figure}.png)" in report


def test_a_moved_sweep_is_reported_from_any_directory(tmp_path, monkeypatch, capsys):
    settings = evaluation(tmp_path)
    settings.steps = [16]
    monkeypatch.chdir(tmp_path)  # the sweep as a user runs it: out relative to the project
    sweep = Sweep.create("logs/s", [str(tiny_base(tmp_path))], ["fkl"], [1.0, 2.0], [10], settings)
    with pytest.raises(SystemExit):  # nothing run yet: the first run that is not done says why
        main(["report", "logs/s"])
    error = capsys.readouterr().err
    assert "logs/s: no finished run to report on (2 not done; the first: fkl/tau_1/seed_10: not run)" in error
    for spec in sweep.runs:
        run = sweep.run_dir(spec)
        write_results(run / "eval-step-16", 3 * spec.tau, 1.0)
        write_results(run / "eval", 5 * spec.tau, 1.0)
        (run / "fit").mkdir()
        summary = FitSummary(32, 1, str(run / "best.ckpt"), 0.5, "val/rougeL", None, {})
        RunStatus("done", spec, fit_dir=str(run / "fit"), checkpoint=summary.checkpoint, fit_summary=summary,
                  eval_dir=str(run / "eval"), minutes=1.0, step_evals=[StepEval(16, str(run / "eval-step-16"))]
                  ).write(run / "status.json")  # fmt: skip

    (tmp_path / "archive").mkdir()
    (tmp_path / "logs/s").rename(tmp_path / "archive/study")  # moved (committed, copied) after it ran
    monkeypatch.chdir(tmp_path / "archive/study/fkl")
    main(["report", ".."])
    summary = (tmp_path / "archive/study/report.md").read_text().split("### Average ROUGE-L at each point")[1]
    assert "| fkl | 1 | 3.00 ± 0.00 | 5.00 ± 0.00 |" in summary
    assert "| fkl | 2 | 6.00 ± 0.00 | 10.00 ± 0.00 |" in summary
