"""Exact resume of an FSDP2 run (configs/strategies/fsdp.yaml, 2 CPU processes, gloo, sharded checkpoints): both
processes SIGKILLed mid-epoch, resumed with ``--ckpt_path last``; the per-step losses, the validation metrics, the
best checkpoint and the final student weights equal an uninterrupted run's. The sharded checkpoint is then read
on one process by ``export`` and ``evaluate``, and refused by a single-process ``validate`` with the fix."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER
from tests.reliability.test_resume import outcome

EPOCHS, STEPS_PER_EPOCH = 2, 4


def fsdp_fit(tmp_path: Path, name: str, *extra: str, kill: dict | None = None) -> list[str]:
    callbacks = [{"class_path": "tests.probes.LossRecorder", "init_args": {"out_dir": str(tmp_path / name)}}]
    if kill is not None:
        callbacks.append({"class_path": "tests.probes.KillAt", "init_args": kill})  # on both processes
    probe = tmp_path / f"{name}-{'kill' if kill else 'run'}.yaml"
    probe.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return [
        sys.executable, "-m", "lit_kd", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--config", str(probe),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.deterministic", "true",
        "--trainer.max_epochs", str(EPOCHS), "--trainer.limit_train_batches", str(STEPS_PER_EPOCH),
        "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.chunk_size", "16", "--last_checkpoint.every_n_train_steps", "1",
        "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min",
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(tmp_path.parent / "cache"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / f"logs-{name}"), *extra,
    ]  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp-resume")
    (root / "reference").mkdir()
    (root / "resumed").mkdir()
    done = run(fsdp_fit(root / "reference", "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run(fsdp_fit(root / "resumed", "run", kill={"hook": "train_batch", "epoch": 1, "batch": 1}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run(fsdp_fit(root / "resumed", "run", "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr
    return {name: outcome(root / name / "run", root / name / "logs-run") for name in ("reference", "resumed")} | {
        "root": root
    }


def test_an_fsdp2_run_killed_mid_epoch_resumes_exactly(fsdp_runs):
    got, expected = fsdp_runs["resumed"], fsdp_runs["reference"]
    assert sorted(got["losses"]) == sorted(expected["losses"]) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for step, loss in expected["losses"].items():
        assert got["losses"][step] == pytest.approx(loss, abs=1e-6, rel=0), step
    assert sorted(got["validation"]) == list(range(EPOCHS))
    for epoch, metrics in expected["validation"].items():
        for key, value in metrics.items():
            assert got["validation"][epoch][key] == pytest.approx(value, abs=1e-6, rel=0), (epoch, key)
    assert got["best"]["best"] == expected["best"]["best"] and got["summary_best"] == expected["summary_best"]
    assert got["checkpoints"] == expected["checkpoints"] == ["best-1-8.ckpt", "last.ckpt"]  # no temporaries left
    for key, value in expected["weights"].items():
        torch.testing.assert_close(got["weights"][key], value, atol=1e-6, rtol=0)


def test_a_sharded_checkpoint_is_exported_and_evaluated_on_one_process(fsdp_runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from lit_kd.cli import main

    version = fsdp_runs["root"] / "reference" / "logs-run" / "tiny" / "version_0"
    best = version / "checkpoints" / "best-1-8.ckpt"
    assert best.is_dir() and (best / "meta.pt").is_file()  # sharded
    main(["export", "--ckpt", str(best), "--out", str(tmp_path / "hf")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    final = fsdp_runs["reference"]["weights"]  # the last epoch is the best one
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, final[name], atol=0, rtol=0)


def test_validate_reads_the_sharded_checkpoint_under_fsdp2(fsdp_runs, tmp_path):
    """``validate --ckpt_path last.ckpt`` on 2 FSDP2 processes: the last epoch's validation losses again."""
    import json

    last = fsdp_runs["root"] / "reference" / "logs-run" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    probe = {"class_path": "tests.probes.LossRecorder", "init_args": {"out_dir": str(tmp_path / "validate")}}
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [probe]}}))
    done = run([
        sys.executable, "-m", "lit_kd", "validate", "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--config", str(tmp_path / "probe.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.limit_val_batches", "2",
        "--ckpt_path", str(last), "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(fsdp_runs["root"] / "cache"), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = map(json.loads, (tmp_path / "validate" / "validation.jsonl").read_text().splitlines())
    expected = fsdp_runs["reference"]["validation"][EPOCHS - 1]
    for key in ("val/loss", "val/kd_loss", "val/lm_loss"):
        assert record[key] == pytest.approx(expected[key], abs=1e-6, rel=0), key


def test_a_single_process_validate_names_the_fix_for_a_sharded_checkpoint(fsdp_runs, tmp_path, capsys):
    from lit_kd.cli import main

    last = fsdp_runs["root"] / "reference" / "logs-run" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(ROOT / "configs" / "tiny.yaml"), "--ckpt_path", str(last),
              "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"lit_kd: error: --ckpt_path {last} is a sharded checkpoint" in err
    assert "add --config configs/strategies/fsdp.yaml with --trainer.devices N" in err
