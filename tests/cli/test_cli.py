"""The command line: every shipped config parses, overrides reach the module, fit → validate/test
from a checkpoint, TensorBoard logs, and bad input ends in one clear line."""

from __future__ import annotations

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_kd.cli import COMMANDS, main
from lit_kd.losses import OBJECTIVES
from lit_kd.training import build
from tests.conftest import DEMO_DATA, ROOT

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.name != "base.yaml" and p.parent.name != "studies")
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
"""``sweep`` options, not fit configs (``test_every_shipped_study_plans``)"""


def config_stack(config):
    """A shipped config with what it is layered on: an objective, strategy, regime, data or student file on the tiny
    config; a model pair, the demo, tiny and the SFT configs alone (the base is the CLI's own default)."""
    if config.parent.name in ("objectives", "strategies", "regimes", "data", "students"):
        return [ROOT / "configs" / "tiny.yaml", config]
    return [config]


def resolved(capsys, *configs, extra=()) -> dict:
    args = [item for path in configs for item in ("--config", str(path))]
    with pytest.raises(SystemExit) as exit_info:
        build(subcommand="fit", args=[*args, *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_parses(config, capsys):
    config_dict = resolved(capsys, *config_stack(config))
    assert config_dict["model"]["loss"]["name"] and config_dict["model"]["loss"]["tau"] > 0
    assert config_dict["data"]["max_length"] > 0
    if config.stem in OBJECTIVES:  # an objective file selects its objective and writes out its settings
        assert config_dict["model"]["loss"]["name"] == config.stem
        written = yaml.safe_load(config.read_text())["model"]["loss"]
        assert {k: config_dict["model"]["loss"][k] for k in written} == written


SHIPPED_STUDIES = {"tau_grid": (60, 2), "tau_variants": (16, 2), "cross_tokenizer": (6, 4), "tau_curves": (12, 2),
                   "tau_curves_family": (12, 2), "tau_curves_squared": (4, 2)}  # fmt: skip
"""runs and Self-BLEU order of each study"""


@pytest.mark.parametrize("study", STUDIES, ids=lambda v: v.name)
def test_every_shipped_study_plans(study, tmp_path, monkeypatch):
    from lit_kd.experiments.plan import load_plan

    monkeypatch.chdir(ROOT)
    main(["sweep", "--config", str(study), "--out", str(tmp_path / "s"), "--launcher", "slurm"])
    plan = load_plan(tmp_path / "s")
    runs, self_bleu_order = SHIPPED_STUDIES[study.stem]
    assert len(plan.runs) == runs and plan.evaluation.self_bleu_order == self_bleu_order
    assert plan.evaluation.steps == ([16, 64, 128] if study.stem.startswith("tau_curves") else [])
    assert len(plan.evaluation.seeds or []) >= 2  # Self-BLEU compares a prompt's samples: one seed leaves it empty
    assert (tmp_path / "s" / "launch_slurm.sh").read_text().count("--keep_last_checkpoints false") == 1


def test_the_shared_base_is_the_cli_default_and_no_config_restates_it(capsys):
    base = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    tiny = resolved(capsys, ROOT / "configs" / "tiny.yaml")
    assert tiny["trainer"]["logger"]["class_path"] == base["trainer"]["logger"]["class_path"]
    assert tiny["trainer"]["logger"]["init_args"]["name"] == "tiny"  # the pair's own value over the base's
    assert tiny["checkpoint"]["monitor"] == "val/rougeL" and tiny["checkpoint"]["mode"] == "max"
    assert tiny["model"]["optimizer"]["class_path"] == "torch.optim.AdamW"

    def leaves(tree, prefix=""):
        if isinstance(tree, dict) and "class_path" not in tree:
            for key, value in tree.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix.rstrip("."), tree

    base_leaves = dict(leaves(base))
    for config in CONFIGS:
        for key, value in leaves(yaml.safe_load(config.read_text()) or {}):
            assert base_leaves.get(key, object()) != value, f"{config.name} restates the base's {key}: {value}"


# what the layered configs are meant to change in a paper run's resolved settings (nothing else may differ):
# ModelCheckpoint's every_n_epochs null is its own default, which saves every epoch like the former explicit 1;
# model.teacher_sharding and model.loss.tau_schedule ... tau_target_entropy are new arguments whose defaults
# (replicate; a constant τ, no per-token rule) are what runs always did; model.chunk_size auto resolves to the former
# 512 rows for GPT-2 (d 768) and 1,024 for OPT-1.3B (d 2,048), and model.compile_loss false is the former eager loss;
# data.prompt_format dolly is the MiniLLM template every run used, and data.supervised_turns all means nothing to it
# (one reply per example)
NEW_DEFAULTS = {"tau_schedule": "constant", "tau_end": None, "tau_horizon": None, "tau_horizon_unit": "steps",
                "tau_rule": "none", "tau_min": 0.05, "tau_max": 100.0, "tau_target_entropy": 1.0}  # fmt: skip
MEANT_TO_DIFFER = {
    ("checkpoint", "every_n_epochs"): (1, None),
    ("model", "teacher_sharding"): (None, "replicate"),
    ("model", "chunk_size"): (512, "auto"),
    ("model", "compile_loss"): (None, False),
    ("data", "prompt_format"): (None, "dolly"),
    ("data", "supervised_turns"): (None, "all"),
    **{("model", "loss", key): (None, value) for key, value in NEW_DEFAULTS.items() if value is not None},
}


@pytest.mark.parametrize("pair", ["gpt2", "opt"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_paper_runs_resolve_as_before_the_layered_configs(capsys, pair, objective):
    before = yaml.safe_load((ROOT / "tests" / "cli" / "resolved_before" / f"{pair}-{objective}.yaml").read_text())
    now = resolved(
        capsys, ROOT / "configs" / "pairs" / f"{pair}.yaml", ROOT / "configs" / "objectives" / f"{objective}.yaml"
    )

    def differences(a, b, path=()):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                yield from differences(a.get(key), b.get(key), (*path, key))
        elif a != b:
            yield path, (a, b)

    found = dict(differences(before, now))
    assert found == MEANT_TO_DIFFER, found


def test_the_docs_list_every_command_and_predict_is_not_one(capsys):
    page = (ROOT / "docs" / "concepts" / "runs.md").read_text()  # moved there from the README (issue 36)
    one_cli = page[page.index("**One CLI.**") : page.index("**Layered configs.**")]
    for name in COMMANDS:
        assert f"`{name}`" in one_cli, name
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(ROOT / "configs" / "tiny.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit_kd: error:") and "predict" in err and "Traceback" not in err


def test_every_command_is_a_subcommand_of_one_parser(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    commands = ["fit", "validate", "test", "demo", "cache-teacher", "generate-data", "evaluate", "export",
                "sweep", "report", "objectives", "train-tokenizer"]  # fmt: skip
    assert list(COMMANDS) == commands
    for command in commands:
        assert f"    {command} " in listing and COMMANDS[command].help in " ".join(listing.split()), command
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    sweep_help = capsys.readouterr().out
    for option, documented in (
        ("--teacher_cache", "Build the teacher cache once"),
        ("--taus", "Distillation temperatures"),
    ):
        assert option in sweep_help and documented in sweep_help
    with pytest.raises(SystemExit):
        main(["cache-teacher", "--help"])
    cache_help = capsys.readouterr().out
    assert "--splits" in cache_help and "--model.teacher_cache" in cache_help  # its own options and the fit config's
    main(["objectives"])
    listing = capsys.readouterr().out
    assert "fkl" in listing and "Across tokenizers (model.cross_tokenizer" in listing
    with pytest.raises(SystemExit) as exit_info:
        main(["objectives", "--extra", "1"])
    assert exit_info.value.code == 2 and "lit_kd: error:" in capsys.readouterr().err


def test_no_private_lightning_api_is_used_or_overridden():
    import ast
    import inspect

    import lightning.pytorch as pl

    sources = sorted((ROOT / "lit_kd").rglob("*.py"))
    for path in sources:
        text = path.read_text()
        for pattern in (
            "trainer._",
            "._logger_connector",
            "self._trainer",
            "._get(",
            "._parser(",
            "_instantiate_trainer",
        ):
            assert pattern not in text, f"{path}: {pattern}"
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            module = __import__(path.relative_to(ROOT).with_suffix("").as_posix().replace("/", "."), fromlist=["x"])
            cls = getattr(module, node.name, None)
            lightning_bases = [b for b in inspect.getmro(cls)[1:] if b.__module__.startswith(("lightning", "torch"))]
            if not lightning_bases:
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("_") and not item.name.startswith("__"):
                    inherited = any(item.name in vars(base) for base in lightning_bases)
                    assert not inherited, f"{path}: {node.name}.{item.name} overrides a private method of {pl.__name__}"


def test_print_config_reflects_overrides(capsys):
    args = ["fit", "--config", str(ROOT / "configs/tiny.yaml"), "--model.loss.name", "rkl", "--model.loss.tau", "2.5"]
    with pytest.raises(SystemExit):
        build(args[1:] + ["--print_config"], subcommand=args[0])
    loss = yaml.safe_load(capsys.readouterr().out)["model"]["loss"]
    assert loss["name"] == "rkl" and loss["tau"] == 2.5 and loss["tau_squared_scaling"] is False
    assert loss["js_beta"] == 0.1  # every hyperparameter is written out in the resolved config


def test_a_loss_swap_by_flag_reaches_the_module(tiny_args):
    cli = build(args=[*tiny_args, "--model.loss.name", "rkl", "--model.loss.tau", "2.5"])
    assert cli.module.loss_config.name == "rkl" and cli.module.loss_config.tau == 2.5
    assert cli.datamodule.tokenizer is cli.module.tokenizer  # connected by the CLI


def test_fit_then_validate_and_test_from_the_checkpoint(tmp_path, tiny_args):
    fit = build(subcommand="fit", args=[*tiny_args, "--model.loss.name", "rkl", "--model.loss.tau", "2.5"])
    log_dir = tmp_path / "logs" / "tiny" / "version_0"
    assert fit.trainer.log_dir == str(log_dir)
    assert list(log_dir.glob("events.out.tfevents.*"))
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["loss"]["name"] == "rkl"
    best = fit.trainer.checkpoint_callback.best_model_path
    assert best and (log_dir / "checkpoints" / "last.ckpt").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # the step's token means; Lightning's LearningRateMonitor and ThroughputMonitor (tokens/s = device/items_per_sec)
    for tag in ("train/loss", "train/kd_loss", "train/lm_loss", "lr-AdamW", "train/device/items_per_sec", "val/loss"):
        assert tag in tags, tag
    diagnostics = [tag for tag in tags if tag.startswith("diag/")]
    assert len(diagnostics) == 5
    logged_steps = [event.step for event in events.Scalars("diag/teacher_entropy")]
    assert logged_steps == [event.step for event in events.Scalars("train/loss")]  # every log_every_n_steps

    assert fit.trainer.checkpoint_callback.monitor == "val/rougeL" and "val/rougeL" in tags
    last = str(log_dir / "checkpoints" / "last.ckpt")
    validated = build(
        [*tiny_args, "--model.loss.name", "rkl", "--model.loss.tau", "2.5", "--ckpt_path", last], subcommand="validate"
    )
    val_loss = validated.trainer.callback_metrics["val/loss"].item()
    assert val_loss == pytest.approx(fit.trainer.callback_metrics["val/loss"].item(), rel=1e-5)  # the trained student
    tested = build(subcommand="test", args=[*tiny_args, "--ckpt_path", best])
    assert tested.trainer.callback_metrics["test/loss"].item() > 0

    # evaluate and export the distilled student straight from its checkpoint
    from lit_kd.cli.evaluate import evaluate
    from lit_kd.cli.export import export
    from lit_kd.eval import SamplingConfig

    out = evaluate(
        ckpt=best, benchmarks=[f"demo={DEMO_DATA}"], seeds=[10], max_examples=3,
        generation=SamplingConfig(max_new_tokens=4),
    )  # fmt: skip
    assert out == log_dir / "eval" / "student_distilled"  # under the run's directory
    assert (out / "results.md").is_file()
    exported = export(ckpt=best, out=str(tmp_path / "exported"))
    assert (exported / "model.safetensors").is_file()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_trains_through_the_cli(tmp_path, tiny_args, name):
    run = build(
        subcommand="fit", args=[*tiny_args, "--model.loss.name", name, "--model.loss.tau", "2.0"]
        + ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.log_every_n_steps", "1"]
    )
    assert run.module.loss_config.name == name
    metrics = run.trainer.callback_metrics
    assert torch.isfinite(metrics["train/kd_loss"]) and metrics["train/kd_loss"] > 0
    assert torch.isfinite(metrics["val/loss"]) and torch.isfinite(metrics["diag/kd_grad_nontarget_norm"])


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.loss.name", "kld"], "model.loss.name: unknown distillation loss 'kld'; valid names: "),
        (["--model.loss.tau", "0"], "model.loss.tau: temperature tau must be finite and > 0, got 0.0"),
        (["--model.loss.tau", "-2"], "model.loss.tau: temperature tau must be finite and > 0, got -2.0"),
        (["--model.loss.tau", ".nan"], "model.loss.tau: temperature tau must be finite and > 0, got nan"),
        (["--model.loss.tau", ".inf"], "model.loss.tau: temperature tau must be finite and > 0, got inf"),
        (["--model.loss.skew_alpha", "1.5"], r"model.loss.skew_alpha must be in [0.0, 1.0], got 1.5"),
        (["--data.raw", "/no/such/file.jsonl"], "data.raw: data file not found: /no/such/file.jsonl"),
        (
            ["--model.teacher.tokenizer", "./no/such/tokenizer"],
            "model.teacher.tokenizer: tokenizer path not found: ./no/such/tokenizer",
        ),
        # checks inside an Optional[...] dataclass, which jsonargparse wraps in its union error
        (["--model.student.peft", '{"r": 0}'], "model.student.peft.r must be a positive integer, got 0"),
        (["--model.policy.student_fraction", "2"], "model.policy.student_fraction must be in [0, 1], got 2.0"),
        (["--model.val_rouge.examples", "0"], "model.val_rouge.examples must be >= 1, got 0 (null turns it off)"),
        (["--model.student.peft", '{"quantize": "nf4"}'], "model.student.peft.quantize needs a student loaded from"),
        (
            ["--model.student.peft", '{"quantize": "nf4"}', "--config", str(ROOT / "configs/strategies/fsdp.yaml"),
             "--trainer.devices", "2"],  # fmt: skip
            "model.student.peft.quantize (QLoRA's 4-bit base) with FSDP2",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tiny_args, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args, *override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"lit_kd: error: {message}" in err
    assert "Traceback" not in err


def test_switching_off_checkpointing_and_the_progress_bar(tiny_args):
    cli = build(args=[*tiny_args, "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.checkpoint_callback is None and cli.trainer.progress_bar_callback is None
    default = build(args=tiny_args)
    assert default.trainer.checkpoint_callback.monitor == "val/rougeL"  # tiny.yaml: best validation ROUGE-L
    checkpoints = [c for c in default.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    # best, then the latest as last.ckpt (LastCheckpoint runs after the best one has recorded each epoch)
    assert [(type(c).__name__, c.monitor) for c in checkpoints] == [
        ("ModelCheckpoint", "val/rougeL"),
        ("LastCheckpoint", None),
    ]
    # Rich in a terminal; under pytest the output is not a terminal: plain lines
    assert type(default.trainer.progress_bar_callback).__name__ == "LineProgress"


def test_a_value_of_the_wrong_type_is_one_clear_line(tiny_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args, "--model.kd_ratio", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith('lit_kd: error: Parser key "model.kd_ratio": Expected a')
    assert len(err.splitlines()) == 1


def test_progress_is_plain_lines_when_the_output_is_not_a_terminal(tmp_path):
    """Plain lines in a log; the time per step leaves out a validation (here slowed by 3 s) that falls between two
    lines; Hugging Face's progress bars (tokenizing, weight loading) do not flood the log."""
    import subprocess
    import sys

    from tests.conftest import TINY_TOKENIZER

    slow = tmp_path / "slow-validation.yaml"
    slow.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "tests.probes.SlowValidation", "init_args": {"seconds": 3}}]}}))  # fmt: skip
    command = [
        sys.executable, "-m", "lit_kd", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(tmp_path / "cache"), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "2",
    ]  # fmt: skip
    slowed = [*command, "--config", str(slow), "--trainer.val_check_interval", "3"]  # validates after step 3
    result = subprocess.run(slowed, cwd=ROOT, capture_output=True, text=True, timeout=300)  # stdout: a pipe
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    steps = [line for line in lines if line.startswith("epoch 0  step ")]
    assert [line.split()[3] for line in steps] == ["2/4", "4/4"], result.stdout[-2000:]
    assert all("s/step" in line and "train/loss" in line for line in steps)
    assert float(steps[1].split()[4]) < 1.0, steps[1]  # 3 s of validation between the lines: not in s/step
    assert any(line.startswith("epoch 0  validation (") and "val/loss" in line for line in lines)
    assert "\r" not in result.stderr and "Tokenizing" not in result.stderr, result.stderr[-2000:]
    assert any(line.startswith("training done: 4 steps in ") for line in lines)
    (checkpoint,) = tmp_path.glob("logs/*/version_0/checkpoints/last.ckpt")
    shared = command[4 : command.index("--trainer.max_epochs")]  # the config and data arguments
    validate = [*command[:3], "validate", *shared, "--ckpt_path", str(checkpoint)]
    result = subprocess.run(validate, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()  # a validation outside fit names no training epoch
    assert any(line.startswith("validation  val/loss") for line in lines), result.stdout[-2000:]
    assert not any(line.startswith("epoch ") for line in lines)
