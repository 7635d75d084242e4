"""Callbacks that record what happens inside runs started as subprocesses (DDP, sweeps) for tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


def _checksum(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


class DDPProbe(L.Callback):
    """Per rank: the training rows seen, whether the teacher stayed frozen, unchanged and outside the
    DDP-wrapped model, and the final validation metrics. Written to ``<out_dir>/rank<k>.json``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.rows: list[str] = []

    def on_fit_start(self, trainer, module) -> None:
        self.teacher_before = _checksum(module.teacher)
        wrapped = {id(p) for p in trainer.strategy.model.parameters()}
        self.teacher_in_wrapped = any(id(p) in wrapped for p in module.teacher.parameters())
        self.wrapper = type(trainer.strategy.model).__name__

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            self.rows.append(hashlib.sha1(row[mask.bool()].numpy().tobytes()).hexdigest())

    def on_fit_end(self, trainer, module) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "wrapper": self.wrapper,
            "rows": self.rows,
            "teacher_frozen": all(not p.requires_grad for p in module.teacher.parameters()),
            "teacher_eval_mode": not module.teacher.training,
            "teacher_unchanged": _checksum(module.teacher) == self.teacher_before,
            "teacher_in_wrapped_model": self.teacher_in_wrapped,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        }
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class LossRecorder(L.Callback):
    """Appends ``{"step", "loss"}`` per training step to ``<out_dir>/losses.jsonl`` (flushed at once, so a
    SIGKILL loses nothing already written) and saves the student's final weights to ``final.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "losses.jsonl", "a") as stream:
            stream.write(json.dumps({"step": trainer.global_step, "loss": float(outputs["loss"])}) + "\n")
            stream.flush()

    def on_fit_end(self, trainer, module) -> None:
        torch.save(module.student.state_dict(), self.out_dir / "final.pt")
