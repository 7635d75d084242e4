"""FSDP2 (configs/strategies/fsdp.yaml: Lightning's ModelParallelStrategy, the student sharded with fully_shard) on
2 CPU processes with gloo, through the CLI; and on a GPU when one is present."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from lit_kd.training import build
from tests.cli.test_ddp import check_two_data_parallel_ranks
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER


def fsdp_cli_fit(tmp_path, *extra: str) -> None:
    """``fit`` of configs/tiny.yaml with configs/strategies/fsdp.yaml on 2 CPU processes (DDPProbe records each)."""
    probe = {"trainer": {"callbacks": [
        {"class_path": "tests.probes.DDPProbe", "init_args": {"out_dir": str(tmp_path / "probe")}}]}}  # fmt: skip
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(probe))
    command = [
        sys.executable, "-m", "lit_kd", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--config", str(tmp_path / "probe.yaml"),
        "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "4", "--trainer.enable_progress_bar", "false",
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(tmp_path / "cache"), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        *extra,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_fsdp2_on_two_cpu_processes_through_the_cli(tmp_path):
    fsdp_cli_fit(tmp_path)
    check_two_data_parallel_ranks(tmp_path / "probe")
    (last,) = tmp_path.glob("logs/tiny/version_0/checkpoints/last.ckpt")
    assert last.is_dir()  # a distributed (sharded) checkpoint


def test_fsdp2_writes_one_consolidated_file_when_asked(tmp_path):
    """``save_distributed_checkpoint: false``: last.ckpt is one file holding the student's full weights, which
    ``export`` turns into a Hugging Face directory."""
    from transformers import AutoModelForCausalLM

    from lit_kd.cli import main
    from lit_kd.modules.loading import read_checkpoint

    fsdp_cli_fit(tmp_path, "--trainer.strategy.init_args.save_distributed_checkpoint", "false")
    (last,) = tmp_path.glob("logs/tiny/version_0/checkpoints/last.ckpt")
    assert last.is_file()
    weights = read_checkpoint(str(last))["state_dict"]
    main(["export", "--ckpt", str(last), "--out", str(tmp_path / "hf")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    assert set(weights) == {f"student.{name}" for name in exported}
    for name, value in exported.items():
        torch.testing.assert_close(value, weights[f"student.{name}"], atol=0, rtol=0)


def test_fsdp_needs_a_number_of_devices(tmp_path, capsys):
    from lit_kd.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
              "--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--trainer.devices", "auto",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lit_kd: error: trainer.devices: FSDP (configs/strategies/fsdp.yaml) needs the number" in err


@pytest.mark.parametrize(
    "strategy, found", [([], "strategy auto, 1 process(es)"),
                        (["--trainer.strategy", "ddp", "--trainer.devices", "4"], "strategy ddp, 4 process(es)"),
                        (["--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--trainer.devices", "1"],
                         "strategy ModelParallelStrategy, 1 process(es)")],
)  # fmt: skip
def test_a_sharded_teacher_needs_fsdp_on_several_processes(tmp_path, capsys, strategy, found):
    from lit_kd.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "tiny.yaml"), *strategy, "--model.teacher_sharding", "shard",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lit_kd: error: model.teacher_sharding: shard splits the teacher over the processes of FSDP2" in err
    assert f"(this run: {found})" in err and not (tmp_path / "logs").exists()  # before anything was built


def test_a_sharded_teacher_needs_a_live_teacher():
    from lit_kd.errors import ConfigError
    from lit_kd.models import ModelConfig, StudentConfig
    from lit_kd.modules import DistillModule

    teacher = ModelConfig(config={"model_type": "llama"}, tokenizer=str(TINY_TOKENIZER))
    with pytest.raises(ConfigError, match="teacher_cache the teacher's body is not loaded: set model.teacher_sharding"):
        DistillModule(StudentConfig(layers=[0]), teacher, teacher_cache="somewhere", teacher_sharding="shard")
    with pytest.raises(ConfigError, match="model.teacher_sharding must be one of replicate, shard, got 'half'"):
        DistillModule(StudentConfig(layers=[0]), teacher, teacher_sharding="half")


@pytest.mark.gpu
def test_fsdp_fits_a_few_steps_with_a_sharded_student_and_a_frozen_teacher(tiny_args, tmp_path):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    run = build(
        [*tiny_args, "--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--trainer.accelerator", "cuda",
         "--trainer.devices", "1", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4"],
        subcommand="fit",
    )  # fmt: skip
    trainer, module = run.trainer, run.module
    assert type(trainer.strategy).__name__ == "ModelParallelStrategy" and trainer.global_step == 4
    assert isinstance(module.student, FSDPModule)
    assert not any(isinstance(p, DTensor) for p in module.teacher.parameters())  # the teacher is not sharded
    assert all(key.startswith("student.") for key in module.state_dict())  # nor part of what checkpoints hold
    assert all(not p.requires_grad for p in module.teacher.parameters()) and not module.teacher.training
    assert next(module.teacher.parameters()).is_cuda
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_the_slurm_script_resolves_to_fsdp2_on_every_gpu_of_every_node(tmp_path):
    """scripts/slurm.sh with SLURM's variables for 2 nodes x 4 GPUs (srun replaced by a pass-through): its command
    resolves to FSDP2 over 2 nodes x 4 devices, the user's configs and overrides kept."""
    import os

    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text('#!/bin/sh\nexec "$@"\n')
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{srun.parent}:{os.environ['PATH']}", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NTASKS_PER_NODE": "4"}  # fmt: skip
    command = ["bash", str(ROOT / "scripts" / "slurm.sh"), "--config", str(ROOT / "configs" / "tiny.yaml"),
               "--model.loss.tau", "3.5", "--print_config"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    trainer = config["trainer"]
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    assert (trainer["num_nodes"], int(trainer["devices"])) == (2, 4)
    assert config["model"]["loss"]["tau"] == 3.5


def test_fsdp2_checkpoints_of_a_lora_student_hold_the_adapters_and_resume(tmp_path):
    """LoRA on the frozen student under FSDP2: the sharded checkpoint holds the adapters alone (the base is
    rebuilt from its source), and a run resumed from it continues."""
    from torch.distributed.checkpoint import FileSystemReader

    lora = ["--model.student.peft", '{"r": 4, "alpha": 8}']
    fsdp_cli_fit(tmp_path, *lora)
    (last,) = tmp_path.glob("logs/tiny/version_0/checkpoints/last.ckpt")
    keys = [k for k in FileSystemReader(str(last)).read_metadata().state_dict_metadata if k.startswith("state_dict")]
    assert keys and all("lora_" in key for key in keys)
    fsdp_cli_fit(tmp_path, *lora, "--ckpt_path", "last", "--trainer.max_epochs", "2")
    summary = json.loads((tmp_path / "logs" / "tiny" / "version_0" / "fit_summary.json").read_text())
    assert summary["global_step"] == 8  # the second epoch ran after the first one's checkpoint
