"""Callbacks every lit_kd run can use: a restart-safe ``last.ckpt``, progress lines for logs, the run's
hyperparameters in TensorBoard's HParams tab, a machine-readable fit summary, the resume hint, and exporting
the best model."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_kd.models.export import check_export_target, export_hf
from lit_kd.modules.loading import load_student_state, read_checkpoint
from lit_kd.utils.io import atomic_write_text, remove_stale_temporaries


def _best_checkpoint(trainer: L.Trainer) -> Optional[ModelCheckpoint]:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            return callback
    return None


def validation_follows(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the fit loop validates right after training batch ``batch_idx`` (the epoch's last batch, or
    every ``val_check_interval`` batches), with the rule Lightning's training epoch loop applies."""
    if not trainer.enable_validation:
        return False
    every = trainer.check_val_every_n_epoch
    if every is not None and (trainer.current_epoch + 1) % every != 0:
        return False
    if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
        return True
    interval = trainer.val_check_batch
    if interval is None or isinstance(interval, float) and math.isinf(interval):
        return False
    position = trainer.fit_loop.total_batch_idx if every is None else batch_idx
    return (position + 1) % int(interval) == 0


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest state of a run, always one that Lightning resumes exactly.

    A checkpoint written at a training batch that validation follows records "batch done, validation not
    yet"; Lightning's fit loop resumes such a checkpoint *past* that validation (it fast-forwards the
    validation progress), so the epoch's ``val/*`` metrics, its best-checkpoint decision and everything
    drawn after it would differ from an uninterrupted run. This callback therefore skips the step-based save
    at such a batch and writes ``last.ckpt`` once the validation and the best checkpoint's bookkeeping are
    done: at the end of the epoch for an end-of-epoch validation (after the other checkpoint callbacks, which
    run before it: lit_kd's CLI orders them so), at the end of the validation for one inside the epoch. A kill
    during validation resumes from the previous ``last.ckpt``, replays the batches since (the data position
    and RNG states are in it) and validates again.
    """

    def __init__(
        self, every_n_train_steps: Optional[int] = None, train_time_interval: Optional[timedelta] = None, **kwargs: Any
    ) -> None:
        super().__init__(every_n_train_steps=every_n_train_steps, train_time_interval=train_time_interval, **kwargs)
        self.step_interval = every_n_train_steps or 0
        self.time_interval = train_time_interval
        self.deferred_to: Optional[str] = None  # "epoch_end" or "validation_end"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath is not None:
            for path in remove_stale_temporaries(self.dirpath):  # a write that a kill interrupted
                rank_zero_info(f"removed {path}, the temporary file of a checkpoint write that was interrupted")

    def _step_save_due(self, trainer: L.Trainer) -> bool:
        due_by_steps = self.step_interval > 0 and trainer.global_step % self.step_interval == 0
        return due_by_steps or self.time_interval is not None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step_save_due(trainer) and validation_follows(trainer, batch_idx):
            last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            self.deferred_to = "epoch_end" if last_batch else "validation_end"  # see the class docstring
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.deferred_to == "validation_end" and not trainer.sanity_checking:
            self._save_deferred(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.deferred_to == "epoch_end":
            self._save_deferred(trainer)

    def _save_deferred(self, trainer: L.Trainer) -> None:
        self.deferred_to = None
        metrics = {
            **trainer.callback_metrics,
            "epoch": torch.tensor(trainer.current_epoch),
            "step": torch.tensor(trainer.global_step),
        }
        self.best_model_path = self.format_checkpoint_name(metrics)  # set first: it is part of the saved state
        trainer.save_checkpoint(self.best_model_path)


class LineProgress(ProgressBar):
    """Progress as plain lines, for output that is not a terminal (a SLURM or ``nohup`` log, where a live bar
    shows nothing): a line every ``every_n_steps`` optimizer steps (default: ``trainer.log_every_n_steps``) with
    the progress-bar metrics and the time per step, one after each validation, one when training ends."""

    def __init__(self, every_n_steps: Optional[int] = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.enabled = True
        self.started = self.last_time = 0.0
        self.last_step = 0

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
            self.print(f"{where}validation  {self.metrics_text(trainer, pl_module, 'val/')}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            minutes = (time.perf_counter() - self.started) / 60
            self.print(f"training done: {trainer.global_step} steps in {minutes:.1f} min")

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.trainer.is_global_zero:
            print(*args, flush=True, **kwargs)


def run_hparams(pl_module: L.LightningModule) -> dict[str, Any]:
    """What distinguishes a run, for TensorBoard's HParams tab: the objective, τ and each of its hyperparameters
    that applies, τ² scaling, kd_ratio, the seed, the student and the teacher (and where it comes from)."""
    params: dict[str, Any] = {"seed": int(os.environ.get("PL_GLOBAL_SEED", -1))}
    loss = getattr(pl_module, "loss_config", None)
    if loss is not None:
        params.update(objective=loss.name, tau=loss.tau, tau_squared_scaling=loss.tau_squared_scaling)
        params.update({f"loss.{field}": getattr(loss, field) for field in loss.objective.hparams.values()})
    for name in ("kd_ratio", "chunk_size"):
        if hasattr(pl_module, name):
            params[name] = getattr(pl_module, name)
    student = getattr(pl_module, "student_config", None)
    if student is not None:
        params["student"] = student.describe() if student.has_source else "cut from the teacher"
        params["student.layers"] = str(student.layers) if student.layers is not None else "all"
    teacher = getattr(pl_module, "teacher_config", None)
    params["teacher"] = teacher.describe() if teacher is not None else "none"
    policy = getattr(pl_module, "policy", None)  # λ: the share of each batch the student samples itself
    params["student_fraction"] = policy.student_fraction if policy is not None else 0.0
    params["adaptive_policy"] = policy is not None and policy.adaptive is not None
    params["teacher_cache"] = getattr(pl_module, "teacher_cache_path", None) is not None
    return params


class HParamsSummary(L.Callback):
    """Each run's hyperparameters (``run_hparams``) in TensorBoard's HParams tab with its best validation ROUGE-L
    (``hp/best_val_rougeL``, updated after every validation; falls back to the lowest ``val/loss`` as
    ``hp/best_val_loss`` when ROUGE-L is off), so ``tensorboard --logdir <sweep dir>`` compares a sweep's runs
    by objective and τ. The best value travels in checkpoints, so a resumed run keeps it."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))

    @staticmethod
    def tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {"hp/best_val_rougeL": self.best.get("hp/best_val_rougeL", float("nan")),
                   "hp/best_val_loss": self.best.get("hp/best_val_loss", float("nan"))}  # fmt: skip
        for logger in self.tensorboards(trainer):
            logger.log_hyperparams(run_hparams(pl_module), metrics=metrics)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        found = trainer.callback_metrics
        for tag, key, better in (("hp/best_val_rougeL", "val/rougeL", max), ("hp/best_val_loss", "val/loss", min)):
            if key in found:
                value = float(found[key])
                self.best[tag] = better(self.best.get(tag, value), value)
        for logger in self.tensorboards(trainer):
            logger.log_metrics(dict(self.best), step=trainer.global_step)


class ResumeHint(L.Callback):
    """On Ctrl-C (or a SIGTERM that Lightning turns into an exception) during ``fit``, say where the latest
    state is and the command that resumes it."""

    def __init__(self, command: str = "") -> None:
        self.command = command

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or not trainer.is_global_zero:
            return
        if trainer.state.fn != "fit":
            return
        latest = [c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)]
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if latest and latest[0] and Path(latest[0]).is_file():
            saved = torch.load(latest[0], map_location="cpu", mmap=True, weights_only=False).get("global_step", "?")
            message = f"interrupted at {where}; the latest state is {latest[0]} (step {saved}). Resume with:"
            command = self.command or "python -m lit_kd fit <the same arguments> --ckpt_path last"
        else:
            message = f"interrupted at {where}, before any last.ckpt was written; start again with:"
            command = self.command.replace(" --ckpt_path last", "") or "the same command"
        print(f"\nlit_kd: {message}\n  {command}", file=sys.stderr, flush=True)


class FitSummary(L.Callback):
    """Writes ``fit_summary.json`` into the run's log directory when fit ends (atomically): the best
    checkpoint, its score and monitor, the last checkpoint, the step count, and the final metrics.
    Sweeps and reports read it instead of guessing file names."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective call (broadcast): every rank must make it
        if not trainer.is_global_zero or log_dir is None:
            return
        best = _best_checkpoint(trainer)
        latest = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor is None]
        summary: dict[str, Any] = {
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "best_model_path": best.best_model_path if best else None,
            "best_model_score": float(best.best_model_score) if best and best.best_model_score is not None else None,
            "monitor": best.monitor if best else None,
            "last_model_path": latest[0].best_model_path if latest else None,
            "metrics": {
                k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
            },
        }
        atomic_write_text(Path(log_dir) / "fit_summary.json", json.dumps(summary, indent=2) + "\n")


class ExportBest(L.Callback):
    """At the end of fit, export the student of the best checkpoint as a Hugging Face directory (the
    teacher-SFT stage's output, which distillation configs point at); without a monitored checkpoint the
    final weights are exported, with a warning. The module keeps the best weights afterwards. An existing
    ``out_dir`` is refused before training starts. Under FSDP, export the best checkpoint with
    ``python -m lit_kd export`` instead."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_export_target(self.out_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = _best_checkpoint(trainer)
        if best is not None and best.best_model_path:
            load_student_state(pl_module, read_checkpoint(best.best_model_path)["state_dict"], best.best_model_path)
        else:
            rank_zero_warn("ExportBest: no monitored checkpoint; exporting the final weights")
        if trainer.is_global_zero:
            export_hf(pl_module.student, pl_module.tokenizer, self.out_dir)
