"""The step's temperature: ``model.loss`` with the τ its schedule gives at the trainer's current optimizer step."""

from __future__ import annotations

import math
from typing import Any

from lit_kd.losses import LossConfig


def scheduled_loss(module: Any) -> LossConfig:
    """The module's ``loss_config`` with ``tau`` = τ(s) after its trainer's s optimizer steps (a constant schedule:
    ``loss_config`` itself, with or without a trainer).
    A horizon in epochs counts ⌈batches per epoch / accumulation⌉ steps per epoch while fitting; outside ``fit``
    (validate, test) the completed epochs give the progress. Both are restored by a resume, so τ is exact."""
    config = module.loss_config
    if config.tau_schedule == "constant":
        return config
    trainer = module.trainer
    batches = trainer.num_training_batches
    fitting = isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0
    if config.tau_horizon_unit == "epochs" and not fitting:
        return config.at_step(trainer.current_epoch, steps_per_epoch=1)
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if fitting else None
    return config.at_step(trainer.global_step, per_epoch)
