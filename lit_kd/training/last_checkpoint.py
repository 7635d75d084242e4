"""``last.ckpt``: the latest state of a run, always one that Lightning resumes exactly.

Two states are not resumable exactly, and this callback never leaves either as ``last.ckpt``:

* **a training batch that validation follows.** Lightning resumes such a checkpoint *past* that validation, so
  the validation's metrics, its best-checkpoint decision and everything drawn after it would differ from an
  uninterrupted run. When a save is due at the end of a batch, the state is written to a temporary file and
  only *committed* (renamed to ``last.ckpt``) at the next hook that shows no validation came in between: the
  next batch's start, the epoch's end or the end of training. If validation starts instead, the temporary is
  dropped and the save is owed: at the end of the epoch when the epoch is over, else at the next batch end.
  Nothing here predicts whether Lightning validates: it is observed (``on_validation_start``), so batch-,
  fraction- and time-based ``val_check_interval`` are all handled alike.
* **the inside of a gradient-accumulation window.** A micro-batch that did not end with an optimizer step
  (``trainer.global_step`` did not move) carries gradients that a checkpoint does not hold; a save due there
  (by steps or by time) waits for the window's last micro-batch.

A kill at any point therefore resumes from the previous committed ``last.ckpt`` and replays what followed it
(the data position and the RNG states are in it). Every state is written under a temporary name first and renamed
into place (``lit_kd.utils.io.replace_path``): a sharded checkpoint (FSDP2's folder, which Lightning writes in
place) is never left half-written as ``last.ckpt`` either. When to save is set as for Lightning's ``ModelCheckpoint``:
``every_n_train_steps`` optimizer steps, or ``train_time_interval`` of training time, or (neither given) every
``every_n_epochs`` epochs (default 1), after the epoch's validation.
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from lit_kd.utils.io import remove_stale_temporaries, replace_path, restore_interrupted_replacements


class LastCheckpoint(ModelCheckpoint):
    """The latest state as ``last.ckpt`` (see the module docstring); ``best_model_path`` is its path once written.
    Run it after the other checkpoint callbacks (lit_kd's ``Trainer`` orders it last): its epoch-end save then
    holds the best checkpoint's bookkeeping of that epoch."""

    def __init__(
        self,
        every_n_train_steps: Optional[int] = None,
        train_time_interval: Optional[timedelta] = None,
        every_n_epochs: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            every_n_epochs=every_n_epochs,
            **kwargs,
        )
        self.step_interval = every_n_train_steps or 0
        self.time_interval = train_time_interval
        by_batches = self.step_interval > 0 or train_time_interval is not None
        self.epoch_interval = every_n_epochs if every_n_epochs is not None else (0 if by_batches else 1)
        self.pending: Optional[tuple[Path, Path]] = None  # (written, target): a batch end not yet known resumable
        self.owed = False  # a due save whose batch validation followed
        self.seen_step = -1
        self.saved_at = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath is not None:
            for path in restore_interrupted_replacements(self.dirpath):
                rank_zero_info(f"restored {path}: a kill had interrupted its replacement by a newer state")
            for path in remove_stale_temporaries(self.dirpath):  # a write (or a pending save) a kill interrupted
                rank_zero_info(f"removed {path}, the temporary file of a checkpoint write that was interrupted")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.seen_step, self.saved_at, self.owed = trainer.global_step, time.monotonic(), False

    # -- when a save is due ------------------------------------------------------------------------------------

    def due_at_batch_end(self, trainer: L.Trainer) -> bool:
        """At the end of an accumulation window: owed, or due by steps, or by time (rank 0's clock decides)."""
        stepped = trainer.global_step != self.seen_step
        self.seen_step = trainer.global_step
        if not stepped:
            return False  # inside an accumulation window (or a skipped step): no resumable state here
        due = self.owed or (self.step_interval > 0 and trainer.global_step % self.step_interval == 0)
        if self.time_interval is not None and not due:
            elapsed = time.monotonic() - self.saved_at >= self.time_interval.total_seconds()
            due = bool(trainer.strategy.broadcast(elapsed))
        return due

    # -- hooks ---------------------------------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fast_dev_run or not self.due_at_batch_end(trainer):  # fast_dev_run: no checkpoints, as Lightning
            return
        self.owed = False
        target = self.target(trainer)
        written = self.temporary(trainer, target)
        self.save(trainer, written, target)
        self.pending = (written, target)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.commit(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.pending is None:
            return
        self.discard(trainer)
        self.owed = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # ModelCheckpoint would save here; this callback saves at batch and epoch ends only

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        epoch_due = self.epoch_interval > 0 and (trainer.current_epoch + 1) % self.epoch_interval == 0
        if not (self.owed or epoch_due):
            self.commit(trainer)
            return
        self.discard(trainer)  # the epoch's end is saved instead
        self.owed = False
        target = self.target(trainer)
        self.pending = (self.temporary(trainer, target), target)
        self.save(trainer, *self.pending)
        self.commit(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.discard(trainer)  # its batch may have been followed by validation: not known to be resumable

    # -- writing -------------------------------------------------------------------------------------------------

    def target(self, trainer: L.Trainer) -> Path:
        metrics = {
            **trainer.callback_metrics,
            "epoch": torch.tensor(trainer.current_epoch),
            "step": torch.tensor(trainer.global_step),
        }
        return Path(self.format_checkpoint_name(metrics))

    @staticmethod
    def temporary(trainer: L.Trainer, target: Path) -> Path:
        """A name every rank agrees on (a sharded checkpoint is written by all), removed on resume if left behind."""
        return target.with_name(f".{target.name}.{trainer.global_step:016x}.tmp.ckpt")

    def save(self, trainer: L.Trainer, path: Path, target: Path) -> None:
        """Write the state to ``path``, recording ``target`` (where it will live) in it."""
        self.best_model_path = self.last_model_path = str(target)  # set first: part of the saved state
        trainer.save_checkpoint(path)
        self.saved_at = time.monotonic()

    def commit(self, trainer: L.Trainer) -> None:
        """The pending batch-end state is resumable (no validation followed it): make it ``last.ckpt``."""
        if self.pending is None:
            return
        (written, target), self.pending = self.pending, None
        if trainer.is_global_zero:
            replace_path(written, target)
        trainer.strategy.barrier("lit_kd.last_checkpoint")

    def discard(self, trainer: L.Trainer) -> None:
        if self.pending is not None and trainer.is_global_zero:
            remove(self.pending[0])
        self.pending = None


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
