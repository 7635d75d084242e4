"""The sweep's records: written with their format number, read back equal; files written before the number
existed are read (converted where the layout changed); a newer format, a corrupt file or a missing field is a
ConfigError naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lit_kd.errors import ConfigError
from lit_kd.experiments import plan as plan_module
from lit_kd.experiments.plan import read_status, regime_layer, write_status
from lit_kd.experiments.records import (
    FIT_SUMMARY_FILE,
    PLAN_FILE,
    STATUS_FILE,
    TEACHER_DATA,
    FitSummary,
    RunSpec,
    RunStatus,
    StepEval,
    SweepEval,
    SweepPlan,
)
from lit_kd.experiments.sweep import Sweep
from tests.experiments.test_sweep import evaluation, tiny_base

# fit_summary.json as the FitSummary callback writes it before the format number (keys and values of a real run)
UNVERSIONED_SUMMARY = {
    "global_step": 2,
    "epochs": 1,
    "best_model_path": "/runs/fit/version_0/checkpoints/best-0-2.ckpt",
    "best_model_score": 0.125,
    "monitor": "val/rougeL",
    "last_model_path": "/runs/fit/version_0/checkpoints/last.ckpt",
    "metrics": {"val/loss": 3.5, "val/rougeL": 0.125},
}


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def test_fit_summary_keeps_its_keys_and_reads_unversioned_files(tmp_path):
    old = FitSummary.read(write_json(tmp_path / FIT_SUMMARY_FILE, UNVERSIONED_SUMMARY))
    assert old == FitSummary(**UNVERSIONED_SUMMARY) and old.checkpoint == UNVERSIONED_SUMMARY["best_model_path"]
    old.write(tmp_path / "again.json")
    written = json.loads((tmp_path / "again.json").read_text())
    assert written == {"format": 1, **UNVERSIONED_SUMMARY}
    assert FitSummary.read(tmp_path / "again.json") == old
    no_best = FitSummary(3, 1, None, None, None, "/last.ckpt", {})
    assert no_best.checkpoint == "/last.ckpt"


def test_run_status_reads_unversioned_files(tmp_path):
    spec = {"index": 3, "objective": "rkl", "tau": 2.0, "seed": 10}  # before the regime axis: no "regime"
    done = {
        "state": "done",
        "fit_dir": "/runs/fit/version_0",
        "checkpoint": UNVERSIONED_SUMMARY["best_model_path"],
        "fit_summary": UNVERSIONED_SUMMARY,
        "eval_dir": "/runs/eval",
        "minutes": 1.5,
        "spec": spec,
    }
    status = RunStatus.read(write_json(tmp_path / STATUS_FILE, done))
    assert status.state == "done" and status.spec == RunSpec(3, "rkl", 2.0, 10)
    assert status.fit_summary == FitSummary(**UNVERSIONED_SUMMARY) and status.eval_dir == "/runs/eval"
    assert status.step_evals == []  # format 1: the best checkpoint was the only evaluation
    failed = {"state": "failed", "stage": "fit", "returncode": 1, "log": "/runs/fit.log", "log_tail": ["x"]}
    status = RunStatus.read(write_json(tmp_path / "failed.json", {**failed, "spec": {**spec, "regime": "seqkd"}}))
    assert (status.stage, status.log_tail, status.spec.regime) == ("fit", ["x"], "seqkd")

    status.write(tmp_path / "again.json")
    written = json.loads((tmp_path / "again.json").read_text())
    assert written == {"format": RunStatus.FORMAT, **failed, "spec": {**spec, "regime": "seqkd"}}  # unset: left out
    assert RunStatus.read(tmp_path / "again.json") == status


def test_run_status_keeps_its_step_evaluations(tmp_path):
    spec = RunSpec(0, "fkl", 1.0, 10)
    points = [StepEval(16, "/runs/eval-step-16"), StepEval(64)]  # 64: not reached
    running = RunStatus("running", spec, started="2026-12-06 18:00:00", fit_dir="/runs/fit/version_0",
                        step_evals=points[:1])  # fmt: skip
    running.write(tmp_path / STATUS_FILE)
    written = json.loads((tmp_path / STATUS_FILE).read_text())
    assert written["format"] == 2 and written["step_evals"] == [{"step": 16, "eval_dir": "/runs/eval-step-16"}]
    assert RunStatus.read(tmp_path / STATUS_FILE) == running
    summary = FitSummary(**UNVERSIONED_SUMMARY)
    done = RunStatus("done", spec, fit_dir="/runs/fit/version_0", checkpoint=summary.checkpoint, fit_summary=summary,
                     eval_dir="/runs/eval", minutes=2.0, step_evals=points)  # fmt: skip
    again = RunStatus.read(done.write(tmp_path / "done.json"))
    assert again == done and again.evaluated_step(64) == StepEval(64) and not again.evaluated_step(64).reached
    assert again.evaluated_step(16).reached and again.evaluated_step(256) is None
    data = {**done.to_dict(), "format": 2}
    del data["step_evals"]  # a format-2 done status must say which steps it evaluated (none: [])
    with pytest.raises(ConfigError, match="a done run status needs step_evals"):
        RunStatus.read(write_json(tmp_path / "bad.json", data))
    data["step_evals"] = [{"step": 16}, {"steps": 64}]
    with pytest.raises(ConfigError, match=r"step_evals\[1\]: unknown key\(s\) steps; missing key\(s\) step"):
        RunStatus.read(write_json(tmp_path / "bad.json", data))


def test_a_format_2_plan_reads_without_steps(tmp_path):
    base = tiny_base(tmp_path)
    sweep = Sweep.create(str(tmp_path / "s"), [str(base)], ["fkl"], [2.0], [10], evaluation(tmp_path))
    old = {"format": 2, **sweep.plan.to_dict()}
    del old["eval"]["steps"]  # written before evaluation.steps existed
    plan = SweepPlan.read(write_json(tmp_path / "s" / PLAN_FILE, old))
    assert plan == sweep.plan and plan.evaluation.steps == []


def test_a_plan_without_a_format_number_is_converted(tmp_path):
    base = tiny_base(tmp_path)
    sweep = Sweep.create(
        str(tmp_path / "s"), [str(base)], ["fkl"], [2.0], [10], evaluation(tmp_path), regimes=["seqkd", "mixed"]
    )
    assert sweep.plan.regime_configs["seqkd"].requires == [TEACHER_DATA]  # declared in seqkd.sweep.json
    assert sweep.plan.regime_configs["mixed"].requires == []
    # the same plan as lit_kd wrote it before format 2: no format number and no "requires"
    old = sweep.plan.to_dict()
    for layer in old["regime_configs"].values():
        del layer["requires"]
    write_json(tmp_path / "s" / PLAN_FILE, old)
    assert SweepPlan.read(tmp_path / "s" / PLAN_FILE) == sweep.plan
    again = Sweep.create(  # the same sweep again: accepted, the old file left as it is
        str(tmp_path / "s"), [str(base)], ["fkl"], [2.0], [10], evaluation(tmp_path), regimes=["seqkd", "mixed"]
    )
    assert again.plan == sweep.plan and "format" not in json.loads((tmp_path / "s" / PLAN_FILE).read_text())

    # older still: before the teacher cache, the regimes and seqkd_args existed
    oldest = {
        "base": [str(base)],
        "runs": [{"index": 0, "objective": "fkl", "tau": 1.0, "seed": 10}],
        "eval": {"benchmarks": ["dolly"]},
        "fit_args": [],
        "objective_configs": {"fkl": {"path": "/configs/objectives/fkl.yaml", "sha256": "ab"}},
    }
    plan = SweepPlan.read(write_json(tmp_path / "oldest.json", oldest))
    assert plan.runs == [RunSpec(0, "fkl", 1.0, 10)] and plan.evaluation == SweepEval(benchmarks=["dolly"])
    assert plan.teacher_cache is None and plan.regime_configs == {} and plan.seqkd_args == []
    assert plan.objective_configs["fkl"].path == "/configs/objectives/fkl.yaml"
    plan.write(tmp_path / "written.json")
    assert json.loads((tmp_path / "written.json").read_text())["format"] == SweepPlan.FORMAT
    assert SweepPlan.read(tmp_path / "written.json") == plan


@pytest.mark.parametrize("record", [FitSummary, RunStatus, SweepPlan], ids=lambda c: c.__name__)
def test_a_newer_format_is_refused_naming_the_file(tmp_path, record):
    path = write_json(tmp_path / "record.json", {"format": record.FORMAT + 1, "from": "the future"})
    with pytest.raises(ConfigError) as error:
        record.read(path)
    message = str(error.value)
    assert str(path) in message and f"format {record.FORMAT + 1}, newer than this lit_kd reads" in message
    assert "upgrade lit_kd" in message


@pytest.mark.parametrize("record", [FitSummary, RunStatus, SweepPlan], ids=lambda c: c.__name__)
def test_a_corrupt_or_incomplete_file_is_a_clear_error(tmp_path, record):
    path = tmp_path / "record.json"
    invalid = re.escape(f"{path} is not a valid {record.WHAT} (")
    path.write_text('{"state": "do')  # cut short by a full disk or an editor
    with pytest.raises(ConfigError, match=f"^{invalid}not JSON: "):
        record.read(path)
    write_json(path, {"format": 1})
    with pytest.raises(ConfigError, match=f"^{invalid}.*missing key"):
        record.read(path)
    write_json(path, {"format": "two"})
    with pytest.raises(ConfigError, match=f"^{invalid}format 'two' is not a number"):
        record.read(path)


def test_malformed_records_name_what_is_wrong(tmp_path):
    path = write_json(tmp_path / FIT_SUMMARY_FILE, {**UNVERSIONED_SUMMARY, "best_score": 1.0})
    with pytest.raises(ConfigError, match=r"is not a valid fit summary \(the summary: unknown key\(s\) best_score\)"):
        FitSummary.read(path)
    spec = {"index": 0, "objective": "fkl", "tau": 1.0, "seed": 10}
    path = write_json(tmp_path / STATUS_FILE, {"state": "done", "spec": spec})
    with pytest.raises(ConfigError, match="a done run status needs fit_dir, checkpoint, fit_summary, eval_dir"):
        RunStatus.read(path)
    path = write_json(tmp_path / STATUS_FILE, {"state": "paused", "spec": spec})
    with pytest.raises(ConfigError, match="state must be one of running, done, failed, busy, got 'paused'"):
        RunStatus.read(path)
    plan = {"format": 2, "base": [], "runs": [{**spec, "regime": "seqkd"}], "eval": {}}
    with pytest.raises(ConfigError, match=r"regime_configs lacks the runs' regime\(s\) seqkd"):
        SweepPlan.read(write_json(tmp_path / PLAN_FILE, plan))
    plan["regime_configs"] = {"seqkd": {"path": "/seqkd.yaml", "sha256": "ab", "requires": ["a_gpu"]}}
    with pytest.raises(ConfigError, match="unknown prerequisite.*a_gpu; known: teacher_data"):
        SweepPlan.read(write_json(tmp_path / PLAN_FILE, plan))


def test_a_regime_declares_its_prerequisites_beside_its_config(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "REGIME_CONFIGS", tmp_path)
    (tmp_path / "distilled.yaml").write_text("model:\n  policy: null\n")
    assert regime_layer("distilled").requires == []  # no .sweep.json: nothing to prepare
    write_json(tmp_path / "distilled.sweep.json", {"requires": [TEACHER_DATA]})
    assert regime_layer("distilled").requires == [TEACHER_DATA]
    write_json(tmp_path / "distilled.sweep.json", {"requires": ["a_gpu"]})
    with pytest.raises(ConfigError, match=r'distilled\.sweep\.json: expected \{"requires": \[...\]\} with names from'):
        regime_layer("distilled")
    (tmp_path / "distilled.sweep.json").write_text("requires: teacher_data")
    with pytest.raises(ConfigError, match=r"distilled\.sweep\.json is not JSON"):
        regime_layer("distilled")


def done_status(run: Path) -> RunStatus:
    """A done status whose paths lie in ``run``, as the sweep records them (``run`` relative or absolute)."""
    summary = FitSummary(64, 1, str(run / "fit/version_0/checkpoints/best-0-64.ckpt"), 0.5, "val/rougeL",
                         str(run / "fit/version_0/checkpoints/last.ckpt"), {})  # fmt: skip
    return RunStatus("done", RunSpec(0, "fkl", 1.0, 10), fit_dir=str(run / "fit/version_0"),
                     checkpoint=summary.checkpoint, fit_summary=summary, eval_dir=str(run / "eval"), minutes=2.0,
                     step_evals=[StepEval(16, str(run / "eval-step-16")), StepEval(256)])  # fmt: skip


@pytest.mark.parametrize("absolute", [False, True], ids=["relative out", "absolute out"])
def test_a_run_status_moves_with_its_sweep_directory(tmp_path, monkeypatch, absolute):
    monkeypatch.chdir(tmp_path)
    sweeps = tmp_path / "logs/sweeps" if absolute else Path("logs/sweeps")
    spec = RunSpec(0, "fkl", 1.0, 10)
    for name in ("new", "old"):
        (sweeps / name / spec.run_id).mkdir(parents=True)
    status = done_status(sweeps / "new" / spec.run_id)
    assert write_status(sweeps / "new", status) == status
    written = json.loads((sweeps / "new" / spec.run_id / STATUS_FILE).read_text())
    assert (written["fit_dir"], written["eval_dir"], written["step_evals"][0]["eval_dir"]) == (
        "fit/version_0", "eval", "eval-step-16")
    assert written["fit_summary"]["last_model_path"] == "fit/version_0/checkpoints/last.ckpt"
    assert read_status(sweeps / "new", spec) == status  # read where it was written: the same paths
    done_status(sweeps / "old" / spec.run_id).write(sweeps / "old" / spec.run_id / STATUS_FILE)  # as before: paths
    # as the sweep saw them from where it ran

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "logs").rename(tmp_path / "elsewhere/results")  # moved, then read from another directory
    monkeypatch.chdir(tmp_path / "elsewhere/results/sweeps")
    for name in ("new", "old"):
        assert read_status(Path(name), spec) == done_status(Path(name) / spec.run_id), name


def test_a_path_outside_the_run_directory_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = RunSpec(0, "fkl", 1.0, 10)
    run = Path("sweep") / spec.run_id
    run.mkdir(parents=True)
    summary = FitSummary(8, 1, "checkpoints/best.ckpt", 0.5, "val/rougeL", None, {})  # a base config's dirpath
    write_status(Path("sweep"), RunStatus("running", spec, started="now", fit_dir=str(run / "fit/version_0"),
                                          fit_summary=summary))  # fmt: skip
    written = json.loads((run / STATUS_FILE).read_text())
    assert written["fit_summary"]["best_model_path"] == str(tmp_path / "checkpoints/best.ckpt")
    monkeypatch.chdir(run)
    status = read_status(Path("../../.."), spec)
    assert status.fit_summary.best_model_path == str(tmp_path / "checkpoints/best.ckpt")
    assert status.fit_dir == "../../../fkl/tau_1/seed_10/fit/version_0"
