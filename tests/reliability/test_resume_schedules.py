"""Exact resume whatever triggers validation and ``last.ckpt``: ``val_check_interval`` as a number of batches, a
fraction of an epoch or a time (validation inside the epoch, where a batch-end checkpoint would be resumed past
its validation), and a time-triggered ``last.ckpt`` that falls inside a gradient-accumulation window.

Each killed run is killed during a validation, resumed, killed again right after a later validation, and resumed
to the end: it must give what an uninterrupted run gives (per-step losses, each validation's metrics, the best
checkpoint, the final weights)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from tests.reliability.test_resume import fit_command, run

EPOCHS = 2
SHORT = ["--trainer.max_epochs", str(EPOCHS), "--trainer.limit_val_batches", "1"]
EVERY_STEP = ["--last_checkpoint.every_n_train_steps", "1"]

# (arguments, the epoch of the first kill)
VALIDATION_SCHEDULES = {
    "every 2 batches": (["--trainer.val_check_interval", "2"], 0),
    "half an epoch": (["--trainer.val_check_interval", "0.5"], 0),
    # a zero time interval validates after every batch, deterministically; no batch end is then resumable, so the
    # first last.ckpt is the end of epoch 0 and both kills fall in epoch 1
    "by time": (["--trainer.val_check_interval", "00:00:00:00", "--trainer.check_val_every_n_epoch", "null"], 1),
}


def outcome(folder: Path) -> dict:
    """Per-step losses, every validation's metrics by (epoch, step) — a replayed validation counts once, its last
    record — the best checkpoint and the final weights."""
    losses = {r["step"]: r["loss"] for r in map(json.loads, (folder / "losses.jsonl").read_text().splitlines())}
    records = map(json.loads, (folder / "validation.jsonl").read_text().splitlines())
    validations = {(r.pop("epoch"), r.pop("step")): r for r in records}
    return {
        "losses": losses,
        "validations": validations,
        "best": json.loads((folder / "best.json").read_text()),
        "weights": torch.load(folder / "final.pt"),
    }


def assert_same(got: dict, expected: dict) -> None:
    assert sorted(got["losses"]) == sorted(expected["losses"])
    for step, loss in expected["losses"].items():
        assert got["losses"][step] == pytest.approx(loss, abs=1e-6, rel=0), step
    assert sorted(got["validations"]) == sorted(expected["validations"])
    for when, metrics in expected["validations"].items():
        for key, value in metrics.items():
            assert got["validations"][when][key] == pytest.approx(value, abs=1e-6, rel=0), (when, key)
    assert got["best"]["best"] == expected["best"]["best"]
    for key, value in expected["weights"].items():
        torch.testing.assert_close(got["weights"][key], value, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "schedule",  # the step-count schedule in the default run; the fractional and timed ones under -m slow
    [pytest.param(name, marks=[] if name == "every 2 batches" else pytest.mark.slow) for name in VALIDATION_SCHEDULES],
    ids=list(VALIDATION_SCHEDULES),
)
def test_kills_during_and_right_after_validation_resume_exactly(tmp_path, schedule):
    arguments, first_kill_epoch = VALIDATION_SCHEDULES[schedule]
    extra = [*SHORT, *EVERY_STEP, *arguments]
    reference = run(fit_command(tmp_path, "reference", *extra))
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = outcome(tmp_path / "reference")
    assert len(expected["validations"]) > EPOCHS  # validation inside the epoch too

    during_validation = {"hook": "validation_batch", "epoch": first_kill_epoch, "batch": 0}
    during = run(fit_command(tmp_path, "run", *extra, kill=during_validation))
    assert during.returncode == -signal.SIGKILL, during.stderr[-2000:]
    right_after_validation = {"hook": "validation_end", "epoch": 1}
    after = run(fit_command(tmp_path, "run", *extra, "--ckpt_path", "last", kill=right_after_validation))
    assert after.returncode == -signal.SIGKILL, after.stderr[-2000:]
    resumed = run(fit_command(tmp_path, "run", *extra, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(outcome(tmp_path / "run"), expected)


def test_a_time_triggered_last_checkpoint_never_lands_inside_an_accumulation_window(tmp_path):
    """Windows of 3 micro-batches; ``train_time_interval`` of 4 s falls due at micro-batch 3 (the first of the second
    window: micro-batch 3 is slow), but ``last.ckpt`` waits for the window's end (micro-batch 5); a kill inside the
    third window resumes from there with nothing of any window lost."""
    extra = [*SHORT, "--trainer.limit_train_batches", "9", "--trainer.accumulate_grad_batches", "3",
             "--last_checkpoint.train_time_interval", "0:00:04"]  # fmt: skip
    reference = run(fit_command(tmp_path, "reference", *extra))
    assert reference.returncode == 0, reference.stderr[-3000:]
    slow = {"class_path": "tests.probes.SleepAt", "init_args": {"epoch": 0, "batch": 3, "seconds": 5}}
    killed = run(fit_command(tmp_path, "run", *extra, kill={"hook": "train_batch", "epoch": 0, "batch": 7},
                             probes=(slow,)))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = torch.load(next((tmp_path / "logs-run").glob("tiny/version_0/checkpoints/last.ckpt")), weights_only=False)
    processed = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert (saved["global_step"], processed) == (2, 6)  # the second window's end, not micro-batch 3
    resumed = run(fit_command(tmp_path, "run", *extra, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(outcome(tmp_path / "run"), outcome(tmp_path / "reference"))
