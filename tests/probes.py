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
    """Appends ``{"step", "loss"}`` per training step to ``<out_dir>/losses.jsonl`` and the validation metrics
    of each epoch to ``validation.jsonl`` (flushed at once, so a SIGKILL loses nothing already written); at the
    end saves the student's final weights to ``final.pt`` and the best checkpoint's name and score to
    ``best.json``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:  # under DDP/FSDP2: the first process's losses
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "losses.jsonl", "a") as stream:
            rows = hashlib.sha1(batch["input_ids"].numpy().tobytes()).hexdigest()[:12]
            record = {"step": trainer.global_step, "loss": float(outputs["loss"]), "batch": rows}
            for name in ("tau", "tau_mean"):  # the step's temperature and a rule's mean per-token τ, when logged
                if f"train/{name}" in trainer.callback_metrics:
                    record[name] = float(trainer.callback_metrics[f"train/{name}"])
            stream.write(json.dumps(record) + "\n")
            stream.flush()

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or trainer.state.fn not in ("fit", "validate") or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.out_dir.mkdir(parents=True, exist_ok=True)  # a validate run has no training batch before
        with open(self.out_dir / "validation.jsonl", "a") as stream:
            stream.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}) + "\n")
            stream.flush()

    def on_fit_end(self, trainer, module) -> None:
        from torch.distributed.tensor import DTensor

        state = module.student.state_dict()  # FSDP2: every process takes part in gathering the shards
        state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}
        if not trainer.is_global_zero:
            return
        torch.save(state, self.out_dir / "final.pt")
        best = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
        record = {"best": Path(best[0].best_model_path).name, "score": float(best[0].best_model_score)} if best else {}
        (self.out_dir / "best.json").write_text(json.dumps(record))


class SleepAt(L.Callback):
    """Sleeps ``seconds`` after training batch ``batch`` of epoch ``epoch`` (a slow step, so that a time-triggered
    checkpoint falls due at a chosen batch)."""

    def __init__(self, epoch: int, batch: int, seconds: float) -> None:
        self.epoch, self.batch, self.seconds = epoch, batch, seconds

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            import time

            time.sleep(self.seconds)


class SlowValidation(L.Callback):
    """Each validation inside fit takes ``seconds`` longer (for the time per step the progress lines report)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            import time

            time.sleep(self.seconds)


class KillAt(L.Callback):
    """SIGKILLs its own process at one chosen point of epoch ``epoch`` (a preemption at the worst moment):

    * ``train_batch`` — after training batch ``batch``, before any checkpoint of that step is written;
    * ``validation_batch`` — after validation batch ``batch`` (its loss and ROUGE-L generation done);
    * ``validation_end`` — after the validation loop, before the checkpoints that follow it are written;
    * ``checkpoint_write`` — while a checkpoint whose file name starts with ``file`` is written at the end of
      validation: its temporary file is complete, the rename into place has not happened;
    * ``train_epoch_end`` — after the epoch, its checkpoints written.
    """

    def __init__(self, hook: str, epoch: int = 1, batch: int = 0, file: str = "last") -> None:
        self.hook, self.epoch, self.batch, self.file = hook, epoch, batch, file
        self.validated = False  # between the end of a validation and the next training batch

    @staticmethod
    def _kill() -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    def _due(self, trainer, hook: str, batch: int = 0) -> bool:
        return (
            hook == self.hook
            and not trainer.sanity_checking
            and trainer.current_epoch == self.epoch
            and batch == self.batch
        )

    def setup(self, trainer, module, stage) -> None:
        if self.hook != "checkpoint_write":
            return
        from contextlib import contextmanager

        from lit_kd.training import checkpoint_io

        real_atomic_path, probe = checkpoint_io.atomic_path, self

        @contextmanager
        def atomic_path(path, **kwargs):
            with real_atomic_path(path, **kwargs) as tmp:
                yield tmp
                if probe.validated and Path(path).name.lstrip(".").startswith(probe.file) and probe._due(trainer, probe.hook):
                    probe._kill()

        checkpoint_io.atomic_path = atomic_path

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.validated = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._due(trainer, "train_batch", batch_idx):
            self._kill()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due(trainer, "validation_batch", batch_idx):
            self._kill()

    def on_validation_end(self, trainer, module) -> None:
        self.validated = not trainer.sanity_checking
        if self._due(trainer, "validation_end"):
            self._kill()

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._due(trainer, "train_epoch_end"):
            self._kill()
