"""Callbacks the Trainer adds to every run, so it resumes exactly and schedules its learning rate over the whole
run: the RNG states in checkpoints, and the LR schedule's horizon."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStates(L.Callback):
    """Saves the torch (CPU and CUDA), Python and NumPy RNG states in checkpoints and restores them, so a resumed
    run draws what the original would have (Lightning restores the data position, not the RNGs)."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
            # as a tensor and plain numbers, so the checkpoint still loads with torch.load(weights_only=True)
            "numpy": [torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        random.setstate(state_dict["python"])
        keys, *rest = state_dict["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *rest))


class ScheduleHorizon(L.Callback):
    """Gives a learning-rate schedule created without ``total_steps`` (``WarmupCosineLR``) the run's number of
    optimizer steps, at the start of training: asking for ``estimated_stepping_batches`` earlier, in
    ``configure_optimizers``, builds the training loader before a checkpoint's loader state is restored, and a
    resumed run would lose its data order."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            if getattr(config.scheduler, "total_steps", 0) is None:
                config.scheduler.total_steps = int(trainer.estimated_stepping_batches)
