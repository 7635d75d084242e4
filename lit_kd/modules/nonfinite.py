"""What a NaN or +inf in the logits or the loss does to a training run (``model.nonfinite``).

``raise`` (the default) keeps each training micro-batch's flags on the device and reads them once, at the
optimizer step, before any weight changes (no host sync per micro-batch or chunk); ``skip`` must decide before
the backward pass, so it reads them at each micro-batch. Evaluation batches are checked as they come.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_kd.errors import ConfigError, NonFiniteError
from lit_kd.losses.chunked import NONFINITE_KINDS, TokenSums

MODES = ("raise", "skip")


class NonFinitePolicy:
    """``raise``: stop with an error naming the step and batch; ``skip``: drop the batch and count it
    (``skipped`` travels in checkpoints)."""

    def __init__(self, mode: str = "raise") -> None:
        if mode not in MODES:
            raise ConfigError(f"model.nonfinite must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped = 0
        self.watched: list[tuple[int, Tensor, Tensor]] = []  # (batch_idx, flags, mean loss) until the step

    def usable(self, sums: TokenSums, stage: str, batch_idx: int, module: LightningModule) -> bool:
        """True when the batch may be used; ``raise`` stops, ``skip`` warns and counts (naming where it was).
        A training batch under ``raise`` is only watched here: ``check_step`` decides at the optimizer step."""
        mean_loss = sums.loss.detach() / max(sums.tokens, 1)
        if self.mode == "raise" and stage == "train":
            self.watched.append((batch_idx, sums.nonfinite, mean_loss))
            return True
        return self.decide(sums.nonfinite, mean_loss, stage, batch_idx, module)

    def check_step(self, module: LightningModule) -> None:
        """Before the optimizer step: raise for the first watched micro-batch that met a non-finite value."""
        watched, self.watched = self.watched, []
        if not watched:
            return
        bad = torch.stack([flags.any() | ~torch.isfinite(loss) for _, flags, loss in watched])
        if bad.any():  # the one host sync of the step
            batch_idx, flags, loss = watched[int(bad.nonzero()[0])]
            self.decide(flags, loss, "train", batch_idx, module)

    def decide(self, flags: Tensor, mean_loss: Tensor, stage: str, batch_idx: int, module: LightningModule) -> bool:
        problems = [kind for kind, found in zip(NONFINITE_KINDS, flags.tolist()) if found]
        if not torch.isfinite(mean_loss):
            problems.append(f"non-finite loss ({mean_loss.item()})")
        if not problems:
            return True
        where = f"{stage} step {module.global_step}, batch {batch_idx}, epoch {module.current_epoch}"
        message = f"{', '.join(problems)} at {where}"
        if self.mode == "raise":
            raise NonFiniteError(message + " (set model.nonfinite: skip to skip such batches)")
        self.skipped += 1
        rank_zero_warn(f"skipping the batch: {message} ({self.skipped} skipped so far)")
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
