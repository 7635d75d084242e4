"""Sweeps and reports on tiny models: runs are independent processes, failures are recorded, finished
runs are skipped on restart, the report has every cell and non-empty figures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lit_kd.cli import main
from lit_kd.errors import ConfigError
from lit_kd.experiments.plan import load_plan
from lit_kd.experiments.records import RegimeLayer, RunSpec, RunStatus, SweepEval, SweepPlan
from lit_kd.experiments.report import Report, RunRecord, collect
from lit_kd.experiments.sweep import Sweep
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER, write_jsonl


def tiny_base(tmp_path: Path, **model_overrides) -> Path:
    """configs/tiny.yaml with absolute paths, one short epoch and tiny generations."""
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False)
    config["trainer"]["enable_model_summary"] = False
    config["model"]["teacher"]["tokenizer"] = str(TINY_TOKENIZER)
    config["model"]["val_rouge"] = {"examples": 2, "generation": {"max_new_tokens": 4, "batch_size": 2}}
    config["model"].update(model_overrides)
    config["data"].update(raw=str(DEMO_DATA), cache_dir=str(tmp_path / "cache"))
    folder = tmp_path / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(config))
    return folder / "base.yaml"


def benchmark_dir(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(3)]
    write_jsonl(tmp_path / "bench" / "dolly" / "valid.jsonl", rows)
    return tmp_path / "bench"


def evaluation(tmp_path: Path) -> SweepEval:
    return SweepEval(benchmarks=["dolly"], data_dir=str(benchmark_dir(tmp_path)), max_new_tokens=4, batch_size=4)


def test_sweep_records_failures_skips_finished_runs_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    base = tiny_base(tmp_path)
    # an objective file of the objective folder is layered on its runs: this one is broken on purpose
    (tmp_path / "objectives").mkdir()
    (tmp_path / "objectives" / "rkl.yaml").write_text(yaml.safe_dump({"model": {"loss": {"skew_alpha": 5.0}}}))
    sweep = Sweep.create(
        str(tmp_path / "sweep"), [str(base)], ["fkl", "rkl"], [1.0, 2.0], [10], evaluation(tmp_path),
        objective_configs=str(tmp_path / "objectives"),
    )  # fmt: skip
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    results = sweep.run(workers=2)  # two runs at a time, each process on half the cores
    assert sweep.threads == max(1, len(os.sched_getaffinity(0)) // 2)
    assert [r.spec for r in results] == sweep.runs
    states = {(r.spec.objective, r.spec.tau): r.state for r in results}
    assert states == {("fkl", 1.0): "done", ("fkl", 2.0): "done", ("rkl", 1.0): "failed", ("rkl", 2.0): "failed"}
    checkpoints = tmp_path / "sweep" / "fkl" / "tau_1" / "seed_10" / "fit" / "version_0" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()  # kept by default
    failed = RunStatus.read(tmp_path / "sweep" / "rkl" / "tau_1" / "seed_10" / "status.json")
    assert failed.stage == "fit" and any("skew_alpha must be in [0.0, 1.0]" in line for line in failed.log_tail)
    run = tmp_path / "sweep" / "fkl" / "tau_2" / "seed_10"
    done = RunStatus.read(run / "status.json")  # its paths relative to the run directory
    assert (run / done.checkpoint).is_file() and (run / done.eval_dir / "results.json").is_file()

    # a restart skips the finished runs: their logs are not touched again
    fit_log = tmp_path / "sweep" / "fkl" / "tau_1" / "seed_10" / "fit.log"
    size = fit_log.stat().st_size
    again = Sweep.load(str(tmp_path / "sweep"))
    again.keep_last_checkpoints = False  # a done run's last.ckpt goes; its evaluated checkpoint stays
    assert again.run_one(again.runs[0]).state == "done" and fit_log.stat().st_size == size
    assert [p.name for p in checkpoints.iterdir()] == [Path(results[0].checkpoint).name]

    capsys.readouterr()
    main(["report", str(tmp_path / "sweep")])
    printed = capsys.readouterr().out
    assert "(+ figure1_fkl_rkl.png, heatmap_gain.png, diagnostics_vs_tau.png, diversity_calibration_vs_tau.png)" in printed
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "| fkl | 1 |" in report and "rkl/tau_1/seed_10: failed at fit" in report
    assert "| fkl | 2 | " in report  # diagnostics row
    quality = report.split("## Diversity and calibration against τ")[1].split("##")[0]
    (fkl_2,) = [line for line in quality.splitlines() if line.startswith("| fkl | 2 |")]
    assert fkl_2.count(" ± ") >= 6 and "| rkl | 1 | n/a |" in quality  # measured for the finished runs only
    for png in ("figure1_fkl_rkl.png", "heatmap_gain.png", "diagnostics_vs_tau.png", "diversity_calibration_vs_tau.png"):
        assert (tmp_path / "sweep" / png).stat().st_size > 1000

    # a run that has started and not finished is reported as such, not as a failure
    status = tmp_path / "sweep" / "rkl" / "tau_2" / "seed_10" / "status.json"
    RunStatus("running", sweep.runs[3], started="2026-11-29 21:58:20").write(status)
    _, problems = collect(tmp_path / "sweep", load_plan(tmp_path / "sweep"))
    assert "rkl/tau_2/seed_10: started 2026-11-29 21:58:20, not finished (running now, or interrupted" in problems[-1]


def test_a_different_plan_in_the_same_directory_is_refused(tmp_path):
    base = tiny_base(tmp_path)
    Sweep.create(str(tmp_path / "s"), [str(base)], ["fkl"], [1.0], [10], evaluation(tmp_path))
    with pytest.raises(ConfigError, match="holds a different sweep"):
        Sweep.create(str(tmp_path / "s"), [str(base)], ["rkl"], [1.0], [10], evaluation(tmp_path))
    with pytest.raises(ConfigError, match="--objectives: unknown distillation loss 'kld'; valid names: ab, akl"):
        Sweep.create(str(tmp_path / "t"), [str(base)], ["kld"], [1.0], [10], evaluation(tmp_path))
    with pytest.raises(ConfigError, match=r"--taus: temperature tau must be finite and > 0, got 0\.0"):
        Sweep.create(str(tmp_path / "t"), [str(base)], ["fkl"], [0.0], [10], evaluation(tmp_path))


def test_slurm_launcher_writes_one_config_per_run_and_runs_nothing(tmp_path, capsys):
    base = tiny_base(tmp_path)
    main(["sweep", "--base", f"[{base}]", "--objectives", "[fkl,rkl]", "--taus", "[1.0,2.5]", "--seeds", "[10,20]",
          "--out", str(tmp_path / "s"), "--launcher", "slurm",
          "--fit_args", "[--trainer.max_epochs,2,--trainer.deterministic,true,--model.optimizer.init_args.lr,0.001]",
          "--seqkd_args", "[--sampling.max_new_tokens,64]"])  # fmt: skip
    plan = SweepPlan.read(tmp_path / "s" / "sweep.json")  # numbers and booleans kept as written
    assert plan.fit_args == [
        "--trainer.max_epochs", "2", "--trainer.deterministic", "true", "--model.optimizer.init_args.lr", "0.001"
    ]  # fmt: skip
    assert plan.seqkd_args == ["--sampling.max_new_tokens", "64"]
    runs = sorted((tmp_path / "s" / "runs").glob("*.yaml"))
    assert len(runs) == 8
    run = yaml.safe_load((tmp_path / "s" / "runs" / "5.yaml").read_text())
    assert run["model"]["loss"] == {"name": "rkl", "tau": 1.0} and run["seed_everything"] == 20
    script = (tmp_path / "s" / "launch_slurm.sh").read_text()
    assert "#SBATCH --array=0-7" in script and "sweep --resume" in script and '--index "$index"' in script
    assert "--keep_last_checkpoints" not in script
    from lit_kd.experiments.plan import write_slurm_launcher

    pruning = write_slurm_launcher(tmp_path / "s", plan, keep_last_checkpoints=False).read_text()
    assert '--index "$index" --keep_last_checkpoints false' in pruning  # every array task prunes its done run
    assert not list((tmp_path / "s").glob("*/tau_*/seed_*/status.json"))  # nothing ran


@pytest.mark.slow
def test_the_whole_chain_teacher_sft_export_sweep_report(tmp_path, monkeypatch):
    """Teacher SFT → export → distill 2 objectives × 2 τ × 2 seeds through sweep → report."""
    monkeypatch.chdir(ROOT)
    sft = yaml.safe_load(tiny_base(tmp_path).read_text())
    teacher_source = sft["model"].pop("teacher")
    sft["model"].update(teacher=None, kd_ratio=0.0)
    sft["model"]["student"] = {"config": teacher_source["config"], "tokenizer": teacher_source["tokenizer"]}
    sft["trainer"]["limit_train_batches"] = 6
    sft["trainer"]["callbacks"] = [
        {"class_path": "lit_kd.training.ExportBest", "init_args": {"out_dir": str(tmp_path / "teacher-sft")}}
    ]
    sft["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft))
    main(["fit", "--config", str(tmp_path / "sft.yaml")])
    assert (tmp_path / "teacher-sft" / "model.safetensors").is_file()

    base = tiny_base(tmp_path, teacher={"path": str(tmp_path / "teacher-sft")}, student={"layers": [0, 3]})
    main(["sweep", "--base", f"[{base}]", "--objectives", "[fkl,rkl]", "--taus", "[1.0,2.0]", "--seeds", "[10,20]",
          "--out", str(tmp_path / "sweep"), "--evaluation.benchmarks", "[dolly]",
          "--evaluation.data_dir", str(benchmark_dir(tmp_path)), "--evaluation.max_new_tokens", "4"])  # fmt: skip
    statuses = [RunStatus.read(p) for p in (tmp_path / "sweep").glob("*/tau_*/seed_*/status.json")]
    assert len(statuses) == 8 and all(s.state == "done" for s in statuses)
    main(["report", str(tmp_path / "sweep")])
    report = (tmp_path / "sweep" / "report.md").read_text()
    table = report.split("## Table 1")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| fkl") or line.startswith("| rkl")]
    assert len(rows) == 4 and not any("n/a" in row for row in rows)  # every cell filled
    grid = report.split("## Average ROUGE-L")[1].split("##")[0]
    assert "n/a" not in grid and grid.count(" ± ") == 4
    crossover = report.split("## FKL vs RKL across τ")[1].split("##")[0]
    assert "τ = 1: FKL " in crossover and ("(the crossover)" in crossover or "no crossover in this grid" in crossover)
    quality = report.split("## Diversity and calibration against τ")[1].split("##")[0]
    rows = [line for line in quality.splitlines() if line.startswith(("| fkl", "| rkl"))]
    assert len(rows) == 4 and all(row.count(" ± ") >= 6 for row in rows)  # Distinct-1..4, entropy, ECE per cell
    for png in ("figure1_fkl_rkl.png", "heatmap_gain.png", "diagnostics_vs_tau.png"):
        assert (tmp_path / "sweep" / png).stat().st_size > 1000


def test_a_run_whose_evaluation_failed_is_not_fitted_again(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    base = tiny_base(tmp_path)
    missing = SweepEval(benchmarks=["dolly"], data_dir=str(tmp_path / "not-yet"), max_new_tokens=4)
    sweep = Sweep.create(str(tmp_path / "s"), [str(base)], ["fkl"], [1.0], [10], missing)
    first = sweep.run_one(sweep.runs[0])
    assert first.state == "failed" and first.stage == "evaluate"
    write_jsonl(tmp_path / "not-yet" / "dolly" / "valid.jsonl", [{"instruction": "q?", "output": "a."}])
    leftover = tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "eval" / "partial.txt"  # an earlier attempt's output
    leftover.parent.mkdir()
    leftover.write_text("kept")
    again = Sweep.load(str(tmp_path / "s"))
    again.keep_last_checkpoints = False
    second = again.run_one(sweep.runs[0])
    assert second.state == "done"
    checkpoints = Path(second.checkpoint).parent
    assert [p.name for p in checkpoints.iterdir()] == [Path(second.checkpoint).name]  # deleted once evaluated
    assert Path(second.eval_dir).name == "eval-2" and leftover.read_text() == "kept"
    fit_log = (tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "fit.log").read_text()
    assert fit_log.count("$ ") == 1  # the finished fit was reused, not repeated
    eval_log = (tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "eval.log").read_text()
    assert eval_log.count("$ ") == 2 and "benchmark file not found" in eval_log  # the first attempt's log is kept


def test_a_report_without_tau_1_runs_has_no_heatmap(tmp_path):
    runs = [RunSpec(i, objective, 2.0, 10) for i, objective in enumerate(["fkl", "rkl"])]
    plan = SweepPlan(["base.yaml"], runs, SweepEval(benchmarks=["dolly"]))
    records = [RunRecord(r.objective, r.tau, r.seed, {"dolly": 5.0 + r.index}, 6.0) for r in runs]
    report = Report(tmp_path, plan, records, [])
    figures = report.figures(tmp_path)
    assert sorted(figures) == ["diagnostics", "figure1"] and not (tmp_path / "heatmap_gain.png").exists()
    markdown = report.markdown(figures)
    assert "no τ = 1 runs" in markdown and "heatmap_gain.png" not in markdown
    assert "| rkl | 2 (best) | 6.00 ± 0.00 | 6.00 ± 0.00 |" in markdown


def test_the_report_states_the_fkl_rkl_crossover_and_plots_diversity_against_tau(tmp_path):
    """RKL ahead at τ = 1, FKL from τ = 2 on (the paper's claim) is stated with the measured means; a grid where one
    objective leads everywhere says there is no crossover."""
    averages = {("fkl", 1.0): [5.0, 5.2], ("rkl", 1.0): [6.0, 6.2], ("fkl", 2.0): [7.0, 7.4], ("rkl", 2.0): [6.5, 6.5],
                ("fkl", 4.0): [7.5, 7.7], ("rkl", 4.0): [6.0, 6.4]}  # fmt: skip
    runs, records = [], []
    for (objective, tau), values in averages.items():
        for seed, value in zip((10, 20), values):
            runs.append(RunSpec(len(runs), objective, tau, seed))
            quality = {"distinct_2": 0.1 * tau, "self_bleu": 20.0 / tau, "entropy": tau, "ece": 0.05 * tau}
            records.append(RunRecord(objective, tau, seed, {"dolly": value}, value, quality=quality,
                                     minutes=2.0 + len(records)))  # fmt: skip
    report = Report(tmp_path, SweepPlan(["base.yaml"], runs, SweepEval(benchmarks=["dolly"])), records, [])
    figures = report.figures(tmp_path)
    assert (tmp_path / "diversity_calibration_vs_tau.png").stat().st_size > 1000 and "quality" in figures
    markdown = report.markdown(figures)
    assert "RKL is ahead at τ = 1 and FKL from τ = 2 (the crossover)" in markdown
    assert "τ = 1: FKL 5.10 ± 0.14 vs RKL 6.10 ± 0.14" in markdown
    assert ("FKL at its best τ = 4 vs RKL at its best τ = 2: 7.60 ± 0.14 vs 6.50 ± 0.00 (FKL ahead, the paper's "
            "direction; the difference +1.10 is beyond one std)") in markdown  # fmt: skip
    assert "| fkl | 4 | 0.400 ± 0.000 |" in markdown  # Distinct-2 in the diversity table
    # 12 runs of 2..13 min: the median and the total (1.5 h) beside the count
    assert "wall time per run (fit + evaluation) 2.0–13.0 min, median 7.5; 1.5 h of run time in all" in markdown
    behind = [r for r in records if r.objective == "rkl"]
    for record in behind:
        record.scores = {"dolly": 1.0}
    assert "no crossover in this grid: FKL is ahead (or level) at every τ" in Report(
        tmp_path, report.plan, records, []).markdown({})  # fmt: skip


def test_sweep_plan_errors(tmp_path, capsys):
    base = tiny_base(tmp_path)
    (base.parent / "fkl.yaml").write_text(yaml.safe_dump({"model": {"loss": {"tau_squared_scaling": True}}}))
    sweep = Sweep.create(
        str(tmp_path / "s"), [str(base)], ["fkl", "fkl"], [1.0, 1.0, 2.0], [10, 10], evaluation(tmp_path),
        objective_configs=str(base.parent),
    )  # fmt: skip
    assert [r.run_id for r in sweep.runs] == ["fkl/tau_1/seed_10", "fkl/tau_2/seed_10"]  # duplicates dropped
    assert "--config" in sweep.fit_command(sweep.runs[0], resume=False)
    (base.parent / "fkl.yaml").write_text(yaml.safe_dump({"model": {"loss": {"tau_squared_scaling": False}}}))
    with pytest.raises(ConfigError, match="changed or vanished since the sweep was planned"):
        Sweep.load(str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="share a run directory name"):
        Sweep.create(str(tmp_path / "t"), [str(base)], ["rkl"], [1.0, 1.0000001], [10], evaluation(tmp_path))
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "sweep.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not a valid sweep plan"):
        Sweep.load(str(tmp_path / "u"))
    with pytest.raises(SystemExit):
        main(["sweep", "--base", f"[{base}]", "--out", str(tmp_path / "v"), "--index", "0"])
    assert "--index runs one run of an existing sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--resume", str(tmp_path / "s"), "--workers", "0"])
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_run_resumes_in_its_own_version_directory(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.chdir(ROOT)
    base = tiny_base(tmp_path)
    fit_args = ["--trainer.max_epochs", "4", "--last_checkpoint.every_n_train_steps", "1"]
    sweep = Sweep.create(str(tmp_path / "s"), [str(base)], ["fkl"], [1.0], [10], evaluation(tmp_path), fit_args)
    runner = [sys.executable, "-m", "lit_kd", "sweep", "--resume", str(tmp_path / "s"), "--index", "0"]
    process = subprocess.Popen(
        runner, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoint = tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "fit" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not checkpoint.is_file() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep process and its fit child
    process.wait()
    assert RunStatus.read(tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "status.json").state == "running"
    status = Sweep.load(str(tmp_path / "s")).run_one(sweep.runs[0])
    assert status.state == "done" and status.fit_dir.endswith("version_0")
    fit_log = (tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "fit.log").read_text()
    commands = [line for line in fit_log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--ckpt_path last" not in commands[0] and "--ckpt_path last" in commands[1]
    assert not (tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "fit" / "version_1").exists()


def test_two_sweeps_started_together_on_one_directory_one_runs_the_other_refuses(tmp_path):
    import subprocess
    import sys

    base = tiny_base(tmp_path)
    command = [
        sys.executable, "-m", "lit_kd", "sweep", "--base", f"[{base}]", "--objectives", "[fkl]", "--taus", "[1.0]",
        "--seeds", "[10]", "--out", str(tmp_path / "s"), "--evaluation.benchmarks", "[dolly]",
        "--evaluation.data_dir", str(benchmark_dir(tmp_path)), "--evaluation.max_new_tokens", "4",
    ]  # fmt: skip
    first, second = (
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    )
    outputs = {p.pid: (p.communicate(timeout=600), p.returncode) for p in (first, second)}
    codes = sorted(code for _, code in outputs.values())
    assert codes == [0, 2], {pid: (code, err[-1500:]) for pid, ((_, err), code) in outputs.items()}
    winner = next(pid for pid, (_, code) in outputs.items() if code == 0)
    (_, refusal), _ = next(value for pid, value in outputs.items() if pid != winner)
    assert f"lit_kd: error: sweep directory {tmp_path / 's'} is in use by pid {winner} on host" in refusal
    run = tmp_path / "s" / "fkl" / "tau_1" / "seed_10"
    assert [p.name for p in (run / "fit").iterdir()] == ["version_0"]  # fitted once
    assert sorted(p.name for p in run.glob("eval*")) == ["eval", "eval.log"]  # evaluated once
    assert (run / "fit.log").read_text().count("$ ") == 1
    assert RunStatus.read(run / "status.json").state == "done"
    assert not (tmp_path / "s" / ".lock").exists() and not (run / ".lock").exists()  # released


def test_array_tasks_lock_their_own_run_not_the_sweep(tmp_path, monkeypatch, capsys):
    from lit_kd.utils.lock import DirectoryLock

    monkeypatch.chdir(ROOT)
    base = tiny_base(tmp_path)
    (base.parent / "rkl.yaml").write_text(yaml.safe_dump({"model": {"loss": {"skew_alpha": 5.0}}}))  # fails fast
    sweep = Sweep.create(
        str(tmp_path / "s"), [str(base)], ["fkl", "rkl"], [1.0], [10], evaluation(tmp_path),
        objective_configs=str(base.parent),
    )  # fmt: skip
    with sweep.owned():  # a local sweep owns the directory ...
        # ... an array task running another run is not held up by it
        assert Sweep.load(str(tmp_path / "s")).run_one(sweep.runs[1]).state == "failed"
    with DirectoryLock(tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / ".lock", "x"):  # run 0 is taken
        with pytest.raises(SystemExit) as exit_info:
            main(["sweep", "--resume", str(tmp_path / "s"), "--index", "0"])
        assert exit_info.value.code == 2
        run_dir = tmp_path / "s" / "fkl" / "tau_1" / "seed_10"
        assert f"sweep run directory {run_dir} is in use by pid {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "status.json").exists()  # untouched


def hparams_of(run_dir: Path) -> tuple[dict, dict]:
    """What TensorBoard's HParams tab shows for one run: its hyperparameters and the metric tags' last values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (version,) = (run_dir / "fit").glob("version_*")
    events = EventAccumulator(str(version))
    events.Reload()
    params = {}
    for tag, content in events.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for name, value in data.session_start_info.hparams.items():
                params[name] = value.string_value or value.number_value or value.bool_value
    metrics = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("hp/")}
    return params, metrics


def test_a_sweep_builds_the_teacher_cache_once_and_every_run_reads_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    base = tiny_base(tmp_path)
    sweep = Sweep.create(
        str(tmp_path / "s"), [str(base)], ["fkl", "rkl"], [2.0], [10], evaluation(tmp_path), teacher_cache="auto"
    )
    results = sweep.run()  # two runs: both read the one cache
    assert [r.state for r in results] == ["done"] * 2
    cache = tmp_path / "s" / "teacher_cache"
    assert (cache / "manifest.json").is_file()
    assert (tmp_path / "s" / "teacher_cache.log").read_text().count("$ ") == 1  # built once
    for spec in sweep.runs:
        fit_log = (sweep.run_dir(spec) / "fit.log").read_text()
        assert f"--model.teacher_cache {cache}" in fit_log
        assert f"teacher from the cache {cache} (its body not loaded)" in fit_log
    again = Sweep.load(str(tmp_path / "s"))
    again.ensure_teacher_cache()  # already there: nothing rebuilt
    assert (tmp_path / "s" / "teacher_cache.log").read_text().count("$ ") == 1

    # TensorBoard's HParams tab: each run's objective, τ, seed and student, with its best validation ROUGE-L
    for spec in sweep.runs:
        params, metrics = hparams_of(sweep.run_dir(spec))
        assert params["objective"] == spec.objective and params["tau"] == spec.tau and params["seed"] == spec.seed
        assert params["kd_ratio"] == 1.0 and params["student"] == "cut from the teacher" and params["teacher_cache"]
        assert params["prompt_format"] == "dolly"
        assert params["student.layers"] == "[0, 3]" and "loss.skew_alpha" not in params
        assert metrics["hp/best_val_rougeL"] >= 0 and metrics["hp/best_val_loss"] > 0
        status = RunStatus.read(sweep.run_dir(spec) / "status.json")
        assert metrics["hp/best_val_rougeL"] == pytest.approx(status.fit_summary.best_model_score, abs=1e-4)


def test_the_regime_is_a_grid_axis(tmp_path):
    base = tiny_base(tmp_path)
    sweep = Sweep.create(
        str(tmp_path / "s"), [str(base)], ["fkl"], [2.0], [10], evaluation(tmp_path), teacher_cache="auto",
        regimes=["off_policy", "seqkd", "mixed", "on_policy"],
    )  # fmt: skip
    regimes = ["off_policy", "seqkd", "mixed", "on_policy"]
    assert [r.run_id for r in sweep.runs] == [f"{regime}/fkl/tau_2/seed_10" for regime in regimes]
    assert [r.label for r in sweep.runs][2] == "fkl [mixed]"
    for spec in sweep.runs:
        command = sweep.fit_command(spec, resume=False)
        regime = str(ROOT / "configs" / "regimes" / f"{spec.regime}.yaml")
        # the regime comes after the cache flag: on-policy and seq-KD runs switch the cache off again
        assert command.index(regime) > command.index("--model.teacher_cache")
        if spec.regime == "seqkd":  # configs/regimes/seqkd.sweep.json requires the teacher's data
            assert f"--data.train={tmp_path / 's' / 'seqkd_data' / 'train.jsonl'}" in command
        else:
            assert "--data.raw" not in command
    assert Sweep.load(str(tmp_path / "s")).runs == sweep.runs
    with pytest.raises(ConfigError, match="--regimes: unknown regime 'offline'; the regimes are cross_tokenizer, cross_tokenizer_lm_only, mixed"):
        Sweep.create(str(tmp_path / "t"), [str(base)], ["fkl"], [2.0], [10], evaluation(tmp_path), regimes=["offline"])


def test_the_report_sets_tau_schedules_and_rules_against_the_best_constant_tau(tmp_path):
    from lit_kd.experiments.plan import sha256, write_plan
    from lit_kd.experiments.report import variant_records

    runs, records = [], []
    for tau, values in ((1.0, [5.0, 5.4]), (2.0, [7.0, 7.2]), (4.0, [6.0, 6.0])):
        for seed, value in zip((10, 20), values):
            runs.append(RunSpec(len(runs), "fkl", tau, seed))
            records.append(RunRecord("fkl", tau, seed, {"dolly": value}, value, quality={"distinct_2": 0.5}))
    plan = SweepPlan(["base.yaml"], runs, SweepEval(benchmarks=["dolly"]))
    variants = [
        RunRecord(f"fkl [{regime}]", 4.0, seed, {"dolly": value}, value, {}, {"distinct_2": 0.7}, "fkl", regime)
        for regime, values in (("tau_cosine", [8.0, 8.2]), ("tau_entropy", [4.0, 4.4]))
        for seed, value in zip((10, 20), values)
    ]
    markdown = Report(tmp_path, plan, records, [], variants).markdown({})
    assert "| fkl | 2 | constant (best τ) | 7.10 ± 0.14 | 0.500 ± 0.000 |" in markdown
    assert "| fkl | 4 | constant | 6.00 ± 0.00 | 0.500 ± 0.000 |" in markdown  # the τ the variants start from
    assert "| fkl | 4 | tau_cosine | 8.10 ± 0.14 | 0.700 ± 0.000 |" in markdown
    assert "| fkl | 4 | tau_entropy | 4.20 ± 0.28 |" in markdown
    assert "τ schedules and rules" not in Report(tmp_path, plan, records, []).markdown({})

    other = tmp_path / "other"
    other.mkdir()
    overlay = tmp_path / "tau_cosine.yaml"
    overlay.write_text("model: {loss: {tau_schedule: cosine, tau_end: 1.0}}\n")
    regimes = {"tau_cosine": RegimeLayer(str(overlay), sha256(overlay), [])}
    variant = [RunSpec(0, "fkl", 4.0, 10, "tau_cosine")]
    write_plan(other, SweepPlan(["base.yaml"], variant, SweepEval(["vicuna"]), regime_configs=regimes))
    with pytest.raises(ConfigError, match="its evaluation differs from the sweep's"):
        variant_records(plan, [str(other)])
    plain = tmp_path / "plain"
    plain.mkdir()
    write_plan(plain, SweepPlan(["base.yaml"], [RunSpec(0, "fkl", 4.0, 10)], SweepEval(benchmarks=["dolly"])))
    with pytest.raises(ConfigError, match="runs every run in a regime"):
        variant_records(plan, [str(plain)])

    # the variants may run fewer objectives than the sweep, each with the sweep's own objective config
    from lit_kd.experiments.records import ConfigLayer

    layers = {}
    for name in ("fkl", "rkl"):
        (tmp_path / f"{name}.yaml").write_text(f"model: {{loss: {{name: {name}}}}}\n")
        layers[name] = ConfigLayer(str(tmp_path / f"{name}.yaml"), sha256(tmp_path / f"{name}.yaml"))
    plan.objective_configs = layers
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    write_plan(fewer, SweepPlan(["base.yaml"], variant, SweepEval(benchmarks=["dolly"]), regime_configs=regimes,
                                objective_configs={"fkl": layers["fkl"]}))  # fmt: skip
    assert variant_records(plan, [str(fewer)])[0] == []  # comparable (its runs are not done yet)
    edited = tmp_path / "edited"
    edited.mkdir()
    write_plan(edited, SweepPlan(["base.yaml"], variant, SweepEval(benchmarks=["dolly"]), regime_configs=regimes,
                                 objective_configs={"fkl": layers["rkl"]}))  # fmt: skip  (another content)
    with pytest.raises(ConfigError, match=r"its objective configs differ from the sweep's \(fkl\)"):
        variant_records(plan, [str(edited)])


@pytest.mark.slow
def test_an_interrupt_of_a_sweep_with_two_workers_leaves_its_runs_resumable(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) stops both runs in progress: they stay
    ``running`` (not ``failed``), so ``--resume`` continues their fits from last.ckpt."""
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.chdir(ROOT)
    base = tiny_base(tmp_path)
    fit_args = ["--trainer.max_epochs", "40", "--last_checkpoint.every_n_train_steps", "1"]
    sweep = Sweep.create(str(tmp_path / "s"), [str(base)], ["fkl", "rkl"], [1.0], [10], evaluation(tmp_path),
                         fit_args)  # fmt: skip
    runner = [sys.executable, "-m", "lit_kd", "sweep", "--resume", str(tmp_path / "s"), "--workers", "2"]
    process = subprocess.Popen(runner, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    checkpoints = [tmp_path / "s" / o / "tau_1" / "seed_10" / "fit" / "version_0" / "checkpoints" / "last.ckpt"
                   for o in ("fkl", "rkl")]  # fmt: skip
    deadline = time.time() + 300
    while not all(c.is_file() for c in checkpoints) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) != 0
    for spec in sweep.runs:
        assert RunStatus.read(tmp_path / "s" / spec.objective / "tau_1" / "seed_10" / "status.json").state == "running"
    status = Sweep.load(str(tmp_path / "s")).run_one(sweep.runs[0])
    fit_log = (tmp_path / "s" / "fkl" / "tau_1" / "seed_10" / "fit.log").read_text()
    commands = [line for line in fit_log.splitlines() if line.startswith("$ ")]
    assert status.state == "done" and len(commands) == 2 and "--ckpt_path last" in commands[1]
