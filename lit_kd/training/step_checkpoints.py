"""The student's weights at chosen optimizer steps, for learning curves: ``step-<N>.ckpt`` beside the run's other
checkpoints, each evaluated later like the best one (``python -m lit_kd evaluate --ckpt``; the sweep does it for
``evaluation.steps``). In a fit config::

    trainer:
      callbacks:
        - class_path: lit_kd.training.StepCheckpoints
          init_args: {steps: [16, 64, 256]}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import lightning as L

from lit_kd.errors import ConfigError
from lit_kd.experiments.records import check_steps, step_checkpoint_path


class StepCheckpoints(L.Callback):
    """Saves the weights (``weights_only``) as ``step-<N>.ckpt`` once global step N is reached, for each N of
    ``steps``, into ``dirpath`` (default: the directory of the run's ``ModelCheckpoint``, else
    ``<log dir>/checkpoints``). A step beyond the run's planned number of optimizer steps is refused at the start of
    training, when Lightning knows that number; one the run does not reach (``max_time``, an interrupted fit) is
    simply not written. A file already there (a resumed fit) is kept."""

    def __init__(self, steps: list[int], dirpath: Optional[str] = None) -> None:
        self.steps = check_steps(steps, "StepCheckpoints.steps")
        self.dirpath = dirpath

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        planned = trainer.estimated_stepping_batches
        if self.steps and math.isfinite(planned) and self.steps[-1] > planned:
            raise ConfigError(
                f"StepCheckpoints.steps (evaluation.steps of a sweep): step {self.steps[-1]} is beyond the "
                f"{int(planned)} optimizer steps this run trains (max_epochs, limit_train_batches, max_steps, "
                "accumulate_grad_batches); lower it or train longer"
            )
        if self.dirpath is None:  # every ModelCheckpoint has resolved its directory by now
            checkpoint = trainer.checkpoint_callback
            log_dir = trainer.log_dir  # a collective call: every rank makes it
            self.dirpath = checkpoint.dirpath if checkpoint is not None and checkpoint.dirpath else None
            self.dirpath = self.dirpath or str(Path(log_dir or ".") / "checkpoints")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step  # after the optimizer step of a window's last micro-batch
        if step not in self.steps or self.dirpath is None:
            return
        path = step_checkpoint_path(self.dirpath, step)
        if not path.exists():  # a sharded (FSDP2) checkpoint is a folder; every rank takes part in the save
            trainer.save_checkpoint(path, weights_only=True)
