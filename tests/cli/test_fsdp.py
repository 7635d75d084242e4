"""FSDP on a GPU: a few steps of two tiny models with Lightning's FSDPStrategy (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from lit_kd.training import build
from tests.conftest import ROOT


@pytest.mark.gpu
def test_fsdp_fits_a_few_steps_with_a_sharded_student_and_a_frozen_teacher(tiny_args, tmp_path):
    run = build(
        subcommand="fit",
        args=[
            *tiny_args,
            "--config",
            str(ROOT / "configs" / "strategies" / "fsdp.yaml"),
            "--trainer.accelerator",
            "cuda",
            "--trainer.devices",
            "1",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "4",
        ]  # fmt: skip
    )
    trainer, module = run.trainer, run.module
    assert type(trainer.strategy).__name__ == "FSDPStrategy" and trainer.global_step == 4
    assert type(trainer.strategy.model).__name__ == "FullyShardedDataParallel"
    wrapped = {id(p) for p in trainer.strategy.model.parameters()}
    assert not any(id(p) in wrapped for p in module.teacher.parameters())  # the teacher is not sharded
    assert all(not p.requires_grad for p in module.teacher.parameters()) and not module.teacher.training
    assert next(module.teacher.parameters()).is_cuda
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=False)
    assert all(key.startswith("student.") for key in checkpoint["state_dict"])
