"""Callbacks every lit_kd run can use: a machine-readable fit summary and exporting the best model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from lit_kd.models.export import check_export_target, export_hf
from lit_kd.modules.loading import load_student_state, read_checkpoint
from lit_kd.utils.io import atomic_write_text


def _best_checkpoint(trainer: L.Trainer) -> Optional[ModelCheckpoint]:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            return callback
    return None


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
