"""Checkpoints written atomically: a kill mid-save never leaves a truncated ``last.ckpt``, and a full disk is
one clear error naming the file and the space it needs."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_kd.utils.io import atomic_path


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors inside a (nested) checkpoint dict: about the size ``torch.save`` writes."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but each file is written beside its target and renamed into place
    (local paths; remote URLs fall back to the plain write), after checking that it fits on the disk."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path, size_hint=tensor_bytes(checkpoint)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
