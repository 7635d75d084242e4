"""What a finished or interrupted fit leaves for people and tools: ``fit_summary.json``, the resume hint, and the
best student exported as a Hugging Face directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_kd.experiments.records import FIT_SUMMARY_FILE
from lit_kd.experiments.records import FitSummary as FitSummaryRecord
from lit_kd.models.export import check_export_target, export_hf
from lit_kd.modules.loading import load_student_state, read_checkpoint
from lit_kd.training.last_checkpoint import LastCheckpoint


def best_checkpoint(trainer: L.Trainer) -> Optional[ModelCheckpoint]:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            return callback
    return None


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
        if latest and latest[0] and Path(latest[0]).exists():  # a file, or a sharded checkpoint's folder
            saved = read_checkpoint(latest[0], mmap=True, tensors=False).get("global_step", "?")
            message = f"interrupted at {where}; the latest state is {latest[0]} (step {saved}). Resume with:"
            command = self.command or "python -m lit_kd fit <the same arguments> --ckpt_path last"
        elif not trainer.checkpoint_callbacks:  # trainer.enable_checkpointing: false
            message = (f"interrupted at {where}; checkpointing is off (trainer.enable_checkpointing: false), so no "
                       "state was saved to resume: start again with:")  # fmt: skip
            command = self.command.replace(" --ckpt_path last", "") or "the same command"
        else:
            message = f"interrupted at {where}, before any last.ckpt was written; start again with:"
            command = self.command.replace(" --ckpt_path last", "") or "the same command"
        print(f"\nlit_kd: {message}\n  {command}", file=sys.stderr, flush=True)


class FitSummary(L.Callback):
    """Writes ``fit_summary.json`` (``lit_kd.experiments.records.FitSummary``) into the run's log directory when
    fit ends, atomically: the best checkpoint, its score and monitor, the last checkpoint, the step count and the
    final metrics. Sweeps and reports read it instead of guessing file names."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective call (broadcast): every rank must make it
        if not trainer.is_global_zero or log_dir is None:
            return
        best = best_checkpoint(trainer)
        latest = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor is None]
        summary = FitSummaryRecord(
            global_step=trainer.global_step,
            epochs=trainer.current_epoch,
            best_model_path=best.best_model_path if best else None,
            best_model_score=float(best.best_model_score) if best and best.best_model_score is not None else None,
            monitor=best.monitor if best else None,
            last_model_path=latest[0].best_model_path if latest else None,
            metrics={k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1},
        )
        summary.write(Path(log_dir) / FIT_SUMMARY_FILE)


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
        best = best_checkpoint(trainer)
        if best is not None and best.best_model_path:
            load_student_state(pl_module, read_checkpoint(best.best_model_path)["state_dict"], best.best_model_path)
        else:
            rank_zero_warn("ExportBest: no monitored checkpoint; exporting the final weights")
        if trainer.is_global_zero:
            export_hf(pl_module.student, pl_module.tokenizer, self.out_dir, pl_module.rendering.name)
