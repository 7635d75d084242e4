"""Token-exact normalization: an optimizer step's loss is Σ per-token values / (the response tokens of the
whole step: every micro-batch of the accumulation window, on every process).

Each micro-batch backpropagates its *sum* Σ_i ℓ_i (Lightning divides it by ``accumulate_grad_batches`` A;
DDP/FSDP average the gradients over the W processes). Before the optimizer step the token counts are summed
over the window and all-reduced over the processes (one scalar collective), and every gradient is multiplied
by A·W / N_step. The result is the gradient of Σ_all ℓ_i / N_step: exactly that of one large batch holding the
same rows, whatever the micro-batches' sizes. Cost: that collective and one in-place multiply per gradient
element per optimizer step (not per micro-batch).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from lit_kd.losses.chunked import SUM_NAMES, TokenSums


class StepNormalizer:
    """Collects the token sums of an accumulation window; ``finish`` rescales the gradients and returns the
    step's token means."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens = 0
        self.sums: dict[str, Tensor] = {}  # kept on the device: no host sync per micro-batch

    def add(self, sums: TokenSums) -> None:
        self.tokens += sums.tokens
        for name in SUM_NAMES:
            value = getattr(sums, name)
            if value is not None:
                value = value.detach().to(torch.float64)
                self.sums[name] = self.sums[name] + value if name in self.sums else value

    def finish(
        self,
        parameters: Iterable[Tensor],
        reduce_sum: Callable[[Tensor], Tensor],
        grad_scale: float,
        device: Optional[torch.device] = None,
    ) -> dict[str, float]:
        """Rescale the accumulated gradients by ``grad_scale / N_step`` (``grad_scale`` = A·W) and return the
        step's token means ``{loss, kd_loss, lm_loss}`` over all processes. ``reduce_sum`` all-reduces a tensor."""
        names = SUM_NAMES  # the same length on every process, whatever each one saw
        local = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
        local[0] = self.tokens
        for i, name in enumerate(names):
            if name in self.sums:
                local[i + 1] = self.sums[name]
        total = reduce_sum(local)
        tokens = float(total[0])
        self.reset()
        if tokens == 0:
            return {}
        factor = grad_scale / tokens
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad.mul_(factor)
        return {name: float(total[i + 1]) / tokens for i, name in enumerate(names)}
