"""The command line: every shipped config parses, overrides reach the module, fit → validate/test
from a checkpoint, TensorBoard logs, and bad input ends in one clear line."""

from __future__ import annotations

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_kd.cli import LitKDCLI, cli_main, main
from lit_kd.losses import OBJECTIVES
from tests.conftest import DEMO_DATA, ROOT

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def config_stack(config):
    """A shipped config with what it is layered on: an objective file on its folder's base.yaml, a
    strategy switch on the tiny config; full configs alone."""
    base = config.parent / "base.yaml"
    if config.parent.name == "strategies":
        return [ROOT / "configs" / "tiny.yaml", config]
    return [base, config] if base.is_file() and config != base else [config]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_parses(config, capsys):
    args = [item for path in config_stack(config) for item in ("--config", str(path))]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["loss"]["name"] and resolved["model"]["loss"]["tau"] > 0
    assert resolved["data"]["max_length"] > 0
    if config.stem in OBJECTIVES:  # an objective file selects its objective and writes out its settings
        assert resolved["model"]["loss"]["name"] == config.stem
        written = yaml.safe_load(config.read_text())["model"]["loss"]
        assert {k: resolved["model"]["loss"][k] for k in written} == written


def test_print_config_reflects_overrides(capsys):
    args = ["fit", "--config", str(ROOT / "configs/tiny.yaml"), "--model.loss.name", "rkl", "--model.loss.tau", "2.5"]
    with pytest.raises(SystemExit):
        cli_main([*args, "--print_config"])
    loss = yaml.safe_load(capsys.readouterr().out)["model"]["loss"]
    assert loss["name"] == "rkl" and loss["tau"] == 2.5 and loss["tau_squared_scaling"] is False
    assert loss["js_beta"] == 0.1  # every hyperparameter is written out in the resolved config


def test_a_loss_swap_by_flag_reaches_the_module(tiny_args):
    cli = LitKDCLI(args=[*tiny_args, "--model.loss.name", "rkl", "--model.loss.tau", "2.5"], run=False)
    assert cli.model.loss_config.name == "rkl" and cli.model.loss_config.tau == 2.5
    assert cli.datamodule.tokenizer is cli.model.tokenizer  # connected by the CLI


def test_fit_then_validate_and_test_from_the_checkpoint(tmp_path, tiny_args):
    fit = cli_main(["fit", *tiny_args, "--model.loss.name", "rkl", "--model.loss.tau", "2.5"])
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
    for tag in ("train/loss", "train/kd_loss", "train/lm_loss", "train/lr", "train/tokens_per_sec", "val/loss"):
        assert tag in tags, tag
    diagnostics = [tag for tag in tags if tag.startswith("diag/")]
    assert len(diagnostics) == 5
    logged_steps = [event.step for event in events.Scalars("diag/teacher_entropy")]
    assert logged_steps == [event.step for event in events.Scalars("train/loss")]  # every log_every_n_steps

    assert fit.trainer.checkpoint_callback.monitor == "val/rougeL" and "val/rougeL" in tags
    last = str(log_dir / "checkpoints" / "last.ckpt")
    validated = cli_main(
        ["validate", *tiny_args, "--model.loss.name", "rkl", "--model.loss.tau", "2.5", "--ckpt_path", last]
    )
    val_loss = validated.trainer.callback_metrics["val/loss"].item()
    assert val_loss == pytest.approx(fit.trainer.callback_metrics["val/loss"].item(), rel=1e-5)  # the trained student
    tested = cli_main(["test", *tiny_args, "--ckpt_path", best])
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
    run = cli_main(
        ["fit", *tiny_args, "--model.loss.name", name, "--model.loss.tau", "2.0"]
        + ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.log_every_n_steps", "1"]
    )
    assert run.model.loss_config.name == name
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
        (["--data.raw", "/no/such/file.jsonl"], "data file not found: /no/such/file.jsonl"),
        (
            ["--model.teacher.tokenizer", "./no/such/tokenizer"],
            "teacher: tokenizer path not found: ./no/such/tokenizer",
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
    cli = LitKDCLI(
        args=[*tiny_args, "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"],
        run=False,
    )
    assert cli.trainer.checkpoint_callback is None and cli.trainer.progress_bar_callback is None
    default = LitKDCLI(args=tiny_args, run=False)
    assert default.trainer.checkpoint_callback.monitor == "val/rougeL"  # tiny.yaml: best validation ROUGE-L
    checkpoints = [c for c in default.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    # best, then the latest as last.ckpt (LastCheckpoint runs after the best one has recorded each epoch)
    assert [(type(c).__name__, c.monitor) for c in checkpoints] == [
        ("ModelCheckpoint", "val/rougeL"),
        ("LastCheckpoint", None),
    ]
    assert type(default.trainer.progress_bar_callback).__name__ == "RichProgressBar"


def test_a_value_of_the_wrong_type_is_one_clear_line(tiny_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args, "--model.kd_ratio", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith('lit_kd: error: Parser key "model.kd_ratio": Expected a')
    assert len(err.splitlines()) == 1
