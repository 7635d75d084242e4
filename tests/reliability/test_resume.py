"""Exact resume from any kill point: SIGKILL a fit at a chosen moment (mid-epoch, during validation and its
ROUGE-L generation, right after validation, while a checkpoint is written, after the epoch), resume with
``--ckpt_path last`` and get what an uninterrupted run gets: the same per-step losses, validation metrics,
best checkpoint and final student weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.experiments.records import FIT_SUMMARY_FILE, FitSummary
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER

STEPS_PER_EPOCH = 4
EPOCHS = 3


def fit_command(
    tmp_path: Path, name: str, *extra: str, kill: dict | None = None, probes: tuple[dict, ...] = ()
) -> list[str]:
    callbacks = [{"class_path": "tests.probes.LossRecorder", "init_args": {"out_dir": str(tmp_path / name)}}]
    callbacks += list(probes)
    if kill is not None:
        callbacks.append({"class_path": "tests.probes.KillAt", "init_args": kill})
    probe = tmp_path / f"{name}-{'kill' if kill else 'run'}.yaml"
    probe.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return [
        sys.executable, "-m", "lit_kd", "fit",
        "--config", str(ROOT / "configs" / "tiny.yaml"), "--config", str(probe),
        "--trainer.deterministic", "true", "--trainer.max_epochs", str(EPOCHS),
        "--trainer.limit_train_batches", str(STEPS_PER_EPOCH), "--trainer.limit_val_batches", "2",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--model.chunk_size", "16",  # several chunks per batch
        # every epoch improves val/loss: each validation writes a new best checkpoint and deletes the old one
        "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min",
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(tmp_path.parent / "cache"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / f"logs-{name}"),
        *extra,
    ]  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def outcome(folder: Path, logs: Path) -> dict:
    """What a run leaves: per-step losses, per-epoch validation metrics, the best checkpoint, the files in
    its checkpoint folder."""
    losses = {r["step"]: r["loss"] for r in map(json.loads, (folder / "losses.jsonl").read_text().splitlines())}
    validation = {r["epoch"]: r for r in map(json.loads, (folder / "validation.jsonl").read_text().splitlines())}
    (version,) = (logs / "tiny").glob("version_*")
    summary = FitSummary.read(version / FIT_SUMMARY_FILE)
    return {
        "losses": losses,
        "validation": validation,
        "best": json.loads((folder / "best.json").read_text()),
        "summary_best": Path(summary.best_model_path).name,
        "checkpoints": sorted(p.name for p in (version / "checkpoints").iterdir()),
        "weights": torch.load(folder / "final.pt"),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "reference"
    root.mkdir()
    done = run(fit_command(root, "reference", "--last_checkpoint.every_n_train_steps", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = outcome(root / "reference", root / "logs-reference")
    assert sorted(result["validation"]) == list(range(EPOCHS))
    assert result["best"]["best"] == f"best-{EPOCHS - 1}-{EPOCHS * STEPS_PER_EPOCH}.ckpt"
    return result


KILL_POINTS = {
    "mid-epoch": {"hook": "train_batch", "epoch": 1, "batch": 1},
    "during validation (loss and generation)": {"hook": "validation_batch", "epoch": 1, "batch": 0},
    "right after validation, before its checkpoints": {"hook": "validation_end", "epoch": 1},
    "while writing the best checkpoint": {"hook": "checkpoint_write", "epoch": 1, "file": "best"},
    "while writing last.ckpt after validation": {"hook": "checkpoint_write", "epoch": 1, "file": "last"},
    "after the epoch": {"hook": "train_epoch_end", "epoch": 1},
}
# the default last_checkpoint (once per epoch, after validation) and a kill mid-epoch
EPOCH_END_ONLY = {"mid-epoch, last.ckpt once per epoch": {"hook": "train_batch", "epoch": 2, "batch": 2}}


POLICY = ["--model.policy.student_fraction", "0.5", "--model.policy.sampling.max_new_tokens", "6"]


def reference_then_killed_mid_epoch_and_resumed(tmp_path: Path, extra: list[str]) -> None:
    """An uninterrupted run ("reference") and one SIGKILLed in the middle of epoch 1, then resumed ("run")."""
    reference = run(fit_command(tmp_path, "reference", *extra))
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = run(fit_command(tmp_path, "run", *extra, kill={"hook": "train_batch", "epoch": 1, "batch": 1}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run(fit_command(tmp_path, "run", *extra, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_sigkill_mid_epoch_then_resume_with_student_sampled_outputs(tmp_path):
    """Mixed-policy (λ = 0.5): the student samples inside the step, seeded by the run's RNG; killed mid-epoch and
    resumed, it samples (and trains on) exactly what an uninterrupted run does."""
    reference_then_killed_mid_epoch_and_resumed(tmp_path, ["--last_checkpoint.every_n_train_steps", "1", *POLICY])
    resumed_as_uninterrupted(tmp_path)


def resumed_as_uninterrupted(tmp_path: Path) -> dict:
    """The resumed run's losses, best checkpoint and final weights equal the reference's; returns the former."""
    expected, got = (outcome(tmp_path / n, tmp_path / f"logs-{n}") for n in ("reference", "run"))
    assert got["losses"] == pytest.approx(expected["losses"], abs=1e-6, rel=0)
    assert got["best"] == expected["best"]
    for key, value in expected["weights"].items():
        torch.testing.assert_close(got["weights"][key], value, atol=1e-6, rtol=0)
    return got


TAU = ["--model.loss.tau", "3", "--model.loss.tau_schedule", "cosine", "--model.loss.tau_end", "1",
       "--model.loss.tau_horizon", "8", "--model.loss.tau_rule", "entropy_target"]  # fmt: skip


def test_sigkill_mid_epoch_then_resume_with_a_tau_schedule_and_rule(tmp_path):
    """τ from the step count alone: the resumed run logs (and trains at) the τ of every step that an uninterrupted
    run does, and each step's τ is the schedule's."""
    from lit_kd.losses import LossConfig

    extra = ["--last_checkpoint.every_n_train_steps", "1", *TAU]
    reference_then_killed_mid_epoch_and_resumed(tmp_path, extra)
    records = {
        name: {r["step"]: r for r in map(json.loads, (tmp_path / name / "losses.jsonl").read_text().splitlines())}
        for name in ("reference", "run")
    }
    schedule = LossConfig(tau=3.0, tau_schedule="cosine", tau_end=1.0, tau_horizon=8)
    assert sorted(records["reference"]) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for step, record in records["reference"].items():
        assert record["tau"] == pytest.approx(schedule.tau_at(step - 1), rel=1e-6)  # τ of the step's start
        assert record["tau_mean"] > 0
        got = records["run"][step]
        assert got["tau"] == record["tau"] and got["tau_mean"] == pytest.approx(record["tau_mean"], rel=1e-6)
        assert got["loss"] == pytest.approx(record["loss"], abs=1e-6, rel=0)


@pytest.fixture(scope="module")
def uninterrupted_from_cache(tmp_path_factory):
    """The same reference run, with the teacher read from a teacher cache (built here, once)."""
    root = tmp_path_factory.mktemp("resume-cache") / "reference"
    root.mkdir()
    cache = root / "teacher-cache"
    built = run(cache_command(root, cache))
    assert built.returncode == 0, built.stderr[-3000:]
    done = run(fit_command(root, "reference", "--last_checkpoint.every_n_train_steps", "1",
                           "--model.teacher_cache", str(cache)))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return outcome(root / "reference", root / "logs-reference"), cache


def cache_command(root: Path, cache: Path) -> list[str]:
    """``cache-teacher`` with the arguments of ``fit_command`` that select the teacher and the data."""
    command = fit_command(root, "build")
    command[3] = "cache-teacher"
    return [*command, "--out", str(cache)]


def test_sigkill_during_validation_then_resume_with_the_teacher_cache(tmp_path, uninterrupted_from_cache):
    expected, cache = uninterrupted_from_cache
    extra = ["--last_checkpoint.every_n_train_steps", "1", "--model.teacher_cache", str(cache)]
    killed = run(fit_command(tmp_path, "run", *extra, kill={"hook": "validation_batch", "epoch": 1, "batch": 0}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run(fit_command(tmp_path, "run", *extra, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = outcome(tmp_path / "run", tmp_path / "logs-run")
    assert got["losses"] == pytest.approx(expected["losses"], abs=1e-6, rel=0)
    assert sorted(got["validation"]) == list(range(EPOCHS)) and got["best"] == expected["best"]
    for key, value in expected["weights"].items():
        torch.testing.assert_close(got["weights"][key], value, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "label, kill, every_step",
    [(label, kill, True) for label, kill in KILL_POINTS.items()]
    + [(label, kill, False) for label, kill in EPOCH_END_ONLY.items()],
    ids=[*KILL_POINTS, *EPOCH_END_ONLY],
)
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted, label, kill, every_step):
    extra = ["--last_checkpoint.every_n_train_steps", "1"] if every_step else []
    killed = run(fit_command(tmp_path, "run", *extra, kill=kill))
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed ({label}): {killed.stderr[-2000:]}"
    assert not (tmp_path / "run" / "best.json").exists()

    resumed = run(fit_command(tmp_path, "run", *extra, "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr

    got = outcome(tmp_path / "run", tmp_path / "logs-run")
    expected = uninterrupted
    assert sorted(got["losses"]) == sorted(expected["losses"]) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for step, loss in expected["losses"].items():
        assert got["losses"][step] == pytest.approx(loss, abs=1e-6, rel=0), step
    assert sorted(got["validation"]) == list(range(EPOCHS))  # an interrupted validation was run again
    for epoch, metrics in expected["validation"].items():
        for key, value in metrics.items():
            assert got["validation"][epoch][key] == pytest.approx(value, abs=1e-6, rel=0), (epoch, key)
    assert got["best"]["best"] == expected["best"]["best"]
    assert got["best"]["score"] == pytest.approx(expected["best"]["score"], abs=1e-6)
    assert got["summary_best"] == expected["summary_best"]
    # the same files: no second copy of a replayed best checkpoint, no temporary left by the killed write
    assert got["checkpoints"] == expected["checkpoints"]
    for key, value in expected["weights"].items():
        torch.testing.assert_close(got["weights"][key], value, atol=1e-6, rtol=0)

    # the resumed run continued in the killed run's own version directory and kept its first config
    version = tmp_path / "logs-run" / "tiny" / "version_0"
    assert (version / "config.yaml").is_file() and list(version.glob("config-resumed-*.yaml"))


def test_ctrl_c_prints_the_command_that_resumes_the_run(tmp_path):
    import os
    import shlex
    import time

    command = fit_command(tmp_path, "run", "--last_checkpoint.every_n_train_steps", "1")
    # stderr goes to a file, not a pipe: a pipe nobody drains until the end can fill up and stall the run
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C works whatever this process did
        )  # fmt: skip
        record = tmp_path / "run" / "losses.jsonl"
        deadline, interrupted = time.time() + 240, False
        while time.time() < deadline and process.poll() is None:
            if record.is_file() and len(record.read_text().splitlines()) >= 3:
                os.kill(process.pid, signal.SIGINT)
                interrupted = True
                break
            time.sleep(0.02)
        process.wait(timeout=120)
    lines = (tmp_path / "stderr.txt").read_text().splitlines()
    assert interrupted, f"the run never reached step 3 (exit code {process.returncode}):\n" + "\n".join(lines[-40:])
    hints = [i for i, line in enumerate(lines) if line.startswith("lit_kd: interrupted at epoch")]
    assert hints, f"exit code {process.returncode}; stderr:\n" + "\n".join(lines[-40:])
    hint = hints[0]
    assert "the latest state is " in lines[hint] and "last.ckpt" in lines[hint] and lines[hint].endswith("Resume with:")
    printed = shlex.split(lines[hint + 1])
    assert printed[:4] == ["python", "-m", "lit_kd", "fit"] and printed[-2:] == ["--ckpt_path", "last"]
    assert printed[4:-2] == command[4:]  # the same arguments

    resumed = run([sys.executable, *printed[1:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr
    assert not (tmp_path / "logs-run" / "tiny" / "version_1").exists()


def test_sigkill_mid_epoch_then_resume_a_student_with_adapters(tmp_path):
    """LoRA on the frozen student: its checkpoints hold the adapters alone (and the base's identity); killed
    mid-epoch and resumed, it trains exactly as an uninterrupted run (losses, best checkpoint, every weight)."""
    extra = ["--last_checkpoint.every_n_train_steps", "1", "--model.student.peft", '{"r": 4, "alpha": 8}']
    reference_then_killed_mid_epoch_and_resumed(tmp_path, extra)
    got = resumed_as_uninterrupted(tmp_path)
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in got["weights"].items())  # it trained
    (last,) = (tmp_path / "logs-run" / "tiny").glob("version_*/checkpoints/last.ckpt")
    stored = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    assert stored and all("lora_" in key for key in stored)
