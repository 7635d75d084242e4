"""Exact resume: SIGKILL a fit mid-epoch, resume with --ckpt_path last, and get the same per-step losses
and the same final student weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER

STEPS_PER_EPOCH = 6
EPOCHS = 3


def fit_command(tmp_path: Path, name: str, *extra: str) -> list[str]:
    probe = {
        "trainer": {
            "callbacks": [{"class_path": "tests.probes.LossRecorder", "init_args": {"out_dir": str(tmp_path / name)}}]
        }
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(probe))
    return [
        sys.executable, "-m", "lit_kd", "fit",
        "--config", str(ROOT / "configs" / "tiny.yaml"), "--config", str(tmp_path / f"{name}.yaml"),
        "--trainer.deterministic", "true", "--trainer.max_epochs", str(EPOCHS),
        "--trainer.limit_train_batches", str(STEPS_PER_EPOCH), "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--last_checkpoint.every_n_train_steps", "1",
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(tmp_path / "cache"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / f"logs-{name}"),
        *extra,
    ]  # fmt: skip


def losses_by_step(path: Path) -> dict[int, float]:
    """The last recorded loss of each step (a resumed run re-records the steps after its checkpoint)."""
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference = subprocess.run(
        fit_command(tmp_path, "reference"), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    # the interrupted run: killed once it is inside its second epoch
    kill_after = STEPS_PER_EPOCH + 3
    process = subprocess.Popen(
        fit_command(tmp_path, "interrupted"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    record = tmp_path / "interrupted" / "losses.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if record.is_file() and len(record.read_text().splitlines()) >= kill_after:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = max(losses_by_step(record))
    assert STEPS_PER_EPOCH < killed_at < EPOCHS * STEPS_PER_EPOCH  # mid-run, past the first epoch

    resume = fit_command(tmp_path, "interrupted", "--ckpt_path", "last")
    resumed = subprocess.run(resume, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr

    expected, got = losses_by_step(tmp_path / "reference" / "losses.jsonl"), losses_by_step(record)
    assert sorted(got) == sorted(expected) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    final_expected = torch.load(tmp_path / "reference" / "final.pt")
    final_got = torch.load(tmp_path / "interrupted" / "final.pt")
    for key, value in final_expected.items():
        torch.testing.assert_close(final_got[key], value, atol=1e-6, rtol=0)

    # the resumed run continued in the killed run's own version directory and kept its first config
    version = tmp_path / "logs-interrupted" / "tiny" / "version_0"
    assert (version / "config.yaml").is_file() and list(version.glob("config-resumed-*.yaml"))
    assert not (tmp_path / "logs-interrupted" / "tiny" / "version_1").exists()
