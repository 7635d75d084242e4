"""Checks before any work (``lit_kd.training.preflight``) and Lightning's own switches, each run for two steps on the
tiny config: every switch runs as it does in Lightning, or is one line saying why it cannot."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from lit_kd.cli import main
from lit_kd.training import build
from lit_kd.training.preflight import logged_metrics
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER

TWO_STEPS = ["--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
             "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
             "--model.val_rouge.examples", "2"]  # fmt: skip


def args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "tiny.yaml"), "--model.teacher.tokenizer", str(TINY_TOKENIZER),
            "--data.raw", str(DEMO_DATA), "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *TWO_STEPS, *extra]  # fmt: skip


def written(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "regime",
    [
        [],
        ["--model.kd_ratio", "0", "--model.val_rouge", "null"],
        ["--model.policy.student_fraction", "0.5", "--model.loss.tau_rule", "logit_standardization",
         "--model.diagnostics", "false"],  # fmt: skip
        ["--model.loss.tau_rule", "entropy_target", "--model.kd_ratio", "0.5"],
    ],
    ids=["kd", "lm-only-no-rouge", "policy-own-student-tau", "entropy-target"],
)
def test_logged_metrics_are_what_a_run_logs(tmp_path, regime):
    run = build(args(tmp_path, *regime), subcommand="fit")
    validation, steps = logged_metrics(run.module, "lr-AdamW")
    logged = set(run.trainer.callback_metrics)
    assert {m for m in logged if m.startswith("val/")} == validation
    assert logged - validation == steps


def test_a_monitor_this_run_never_logs_is_one_line_before_anything_is_written(tmp_path, capsys):
    for extra, message in [
        (["--checkpoint.monitor", "val/nothing"], "checkpoint.monitor: 'val/nothing' is never logged by this run"),
        (["--model.kd_ratio", "0", "--checkpoint.monitor", "val/kd_loss"],
         "checkpoint.monitor: 'val/kd_loss' is never logged"),
        (["--model.val_rouge", "null", "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor",
          "val/rougeL"], "trainer.callbacks EarlyStopping.monitor: 'val/rougeL' is never logged by this run "
                         "(model.val_rouge is null: no ROUGE-L is computed); each validation logs val/kd_loss"),
        (["--model.optimizer.init_args.lr", "-1"], "model.optimizer: Invalid learning rate: -1.0"),
        (["--model.optimizer.init_args.lr", ".inf"], "model.optimizer.init_args.lr must be a finite number, got inf"),
        (["--model.optimizer.init_args.betas", "[0.9, 1.5]"], "model.optimizer: Invalid beta parameter at index 1"),
        (["--model.lr_scheduler.init_args.total_steps", "0"], "model.lr_scheduler.init_args: total_steps must be"),
        (["--trainer.max_time", "soon"], "trainer.max_time: `Timer(duration='soon')` is not a valid duration"),
        (["--trainer.accelerator", "abacus"], "trainer: You selected an invalid accelerator name"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args(tmp_path, *extra)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"lit_kd: error: {message}" in err and "Traceback" not in err, err
        assert written(tmp_path / "logs") == []


def test_without_rouge_the_best_checkpoint_falls_back_to_the_validation_loss(tmp_path, caplog):
    run = build(args(tmp_path, "--model.val_rouge", "null"), subcommand="fit")
    assert run.trainer.checkpoint_callback.monitor == "val/loss" and run.trainer.checkpoint_callback.mode == "min"
    assert run.trainer.checkpoint_callback.best_model_path.endswith(".ckpt")
    assert "model.val_rouge is null (no ROUGE-L): the best checkpoint is kept by val/loss (min)" in caplog.text


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    main(["cache-teacher", *args(folder), "--out", str(folder / "teacher")])
    return folder / "teacher"


def switch_cases(cache: Path) -> dict[str, list[str]]:
    return {
        "logger-false": ["--trainer.logger", "false"],
        "no-checkpointing": ["--trainer.enable_checkpointing", "false"],
        "logger-false-no-checkpointing": ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"],
        "fast-dev-run": ["--trainer.fast_dev_run", "true"],
        "fast-dev-run-cached-teacher": ["--trainer.fast_dev_run", "true", "--model.teacher_cache", str(cache)],
        "overfit-batches": ["--trainer.overfit_batches", "1"],
        "validate-every-2nd-epoch": ["--trainer.check_val_every_n_epoch", "2", "--trainer.max_epochs", "2",
                                     "--trainer.max_steps", "4"],  # fmt: skip
        "no-progress-bar": ["--trainer.enable_progress_bar", "false"],
        "early-stopping": ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor", "val/loss"],
    }


@pytest.mark.parametrize("switch", list(switch_cases(Path())))
def test_each_lightning_switch_runs_as_in_lightning(tmp_path, teacher_cache, capsys, switch):
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from lit_kd.training import HParamsSummary, ResumeHint

    extra = switch_cases(teacher_cache)[switch]
    if "false" in extra and "--trainer.logger" in extra:
        extra = [*extra, "--trainer.default_root_dir", str(tmp_path / "root")]
    (tmp_path / "cwd").mkdir()
    with contextlib.chdir(tmp_path / "cwd"):  # where a checkpoint with no directory of its own would land
        run = build(args(tmp_path, *extra), subcommand="fit")
    trainer, out = run.trainer, capsys.readouterr()
    files = written(tmp_path / "logs") + written(tmp_path / "cwd")
    files += written(tmp_path / "root") if (tmp_path / "root").exists() else []
    checkpoints = [f for f in files if f.endswith(".ckpt")]
    steps = {"fast-dev-run": 1, "fast-dev-run-cached-teacher": 1, "overfit-batches": 1,  # one batch in the epoch
             "validate-every-2nd-epoch": 4}  # fmt: skip
    assert trainer.global_step == steps.get(switch, 2)
    if switch.startswith("logger-false"):
        assert not trainer.loggers and not any(isinstance(c, (LearningRateMonitor, HParamsSummary))
                                               for c in trainer.callbacks)  # fmt: skip
        assert not any("events.out.tfevents" in f for f in files) and "validation" in out.out  # progress printed
    if "no-checkpointing" in switch:
        assert checkpoints == []
        hint = next(c for c in trainer.callbacks if isinstance(c, ResumeHint))
        hint.on_exception(trainer, run.module, KeyboardInterrupt())
        assert "checkpointing is off (trainer.enable_checkpointing: false)" in capsys.readouterr().err
    elif switch.startswith("fast-dev-run"):
        assert files == []  # Lightning's fast_dev_run writes no logs and no checkpoints
    else:
        assert any(f.endswith("last.ckpt") for f in checkpoints) and any("best-" in f for f in checkpoints)
    if switch == "validate-every-2nd-epoch":  # the best ROUGE-L checkpoint is the one validated epoch
        assert [f.rsplit("/", 1)[-1] for f in checkpoints if "best-" in f] == ["best-1-4.ckpt"]
        assert trainer.checkpoint_callback.monitor == "val/rougeL"
    if switch == "no-progress-bar":
        assert "validation" not in out.out and trainer.progress_bar_callback is None
    if switch == "early-stopping":
        assert any(isinstance(c, EarlyStopping) and c.monitor == "val/loss" for c in trainer.callbacks)
