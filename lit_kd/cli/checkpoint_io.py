"""Checkpoints written atomically: a kill mid-save never leaves a truncated ``last.ckpt``."""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_kd.utils.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but each file is written beside its target and renamed into place
    (local paths; remote URLs fall back to the plain write)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
