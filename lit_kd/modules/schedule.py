"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr_ratio`` of the base rate."""

from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lit_kd.errors import ConfigError


class WarmupCosineLR(LRScheduler):
    """Warm-up then cosine: with W = ``warmup_steps``, T = ``total_steps``, r = ``min_lr_ratio``,

        lr(s) = base · (s + 1)/(W + 1)                                  for s < W,
        lr(s) = base · (r + (1 − r) · ½ (1 + cos(π (s − W)/(T − W))))   for s ≥ W.

    ``total_steps`` (T) may be left ``None``: ``DistillModule`` fills it from the trainer's estimated
    number of optimizer steps when training starts (until then the factor after warm-up is 1).
    ``min_lr_ratio: 1.0`` keeps the rate constant after the warm-up (learning curves: the weights at step s are then
    those of a run stopped there). Stepped once per optimizer step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        total_steps: Optional[int] = None,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if total_steps is not None and total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1 (or null: the trainer's estimate), got {total_steps}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.total_steps is None or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
