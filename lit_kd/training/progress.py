"""Progress as plain lines, for output that is not a terminal (a SLURM or ``nohup`` log)."""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ProgressBar


class LineProgress(ProgressBar):
    """Progress as plain lines, for output that is not a terminal (a SLURM or ``nohup`` log, where a live bar
    shows nothing): a line every ``every_n_steps`` optimizer steps (default: ``trainer.log_every_n_steps``) with
    the progress-bar metrics and the time per training step, one after each validation (with its time), one when
    training ends. The time per step leaves out validation and what follows it before training resumes (its
    checkpoints)."""

    def __init__(self, every_n_steps: Optional[int] = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.enabled = True
        self.started = self.last_time = 0.0
        self.last_step = 0
        self.paused_at: Optional[float] = None  # when a validation inside fit began

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def metrics_text(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str = "") -> str:
        metrics = self.get_metrics(trainer, pl_module)
        return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                         if k.startswith(prefix) and k != "v_num")  # fmt: skip

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.last_time = time.perf_counter()
        self.last_step = trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.paused_at = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[override]
        if self.paused_at is not None:  # training resumes: the pause does not count as training time
            self.last_time += time.perf_counter() - self.paused_at
            self.paused_at = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        every = self.every_n_steps or max(trainer.log_every_n_steps, 1)
        step = trainer.global_step
        if not self.enabled or step == self.last_step or step % every:
            return
        now = time.perf_counter()
        per_step = (now - self.last_time) / (step - self.last_step)
        self.last_time, self.last_step = now, step
        total = "?" if trainer.max_steps is None or trainer.max_steps < 0 else trainer.max_steps
        if total == "?" and trainer.max_epochs is not None and isinstance(self.total_train_batches, int):
            total = trainer.max_epochs * math.ceil(self.total_train_batches / trainer.accumulate_grad_batches)
        self.print(f"epoch {trainer.current_epoch}  step {step}/{total}  {per_step:.2f} s/step  "
                   f"{self.metrics_text(trainer, pl_module, 'train/')}")  # fmt: skip

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            # a validation outside fit (e.g. of the best checkpoint afterwards) belongs to no training epoch
            where = f"epoch {trainer.current_epoch}  " if trainer.state.fn == "fit" else ""
            took = f" ({time.perf_counter() - self.paused_at:.1f} s)" if self.paused_at is not None else ""
            self.print(f"{where}validation{took}  {self.metrics_text(trainer, pl_module, 'val/')}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            minutes = (time.perf_counter() - self.started) / 60
            self.print(f"training done: {trainer.global_step} steps in {minutes:.1f} min")

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.trainer.is_global_zero:
            print(*args, flush=True, **kwargs)
