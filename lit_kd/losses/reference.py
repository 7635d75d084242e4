"""The fixed reference input of ``../shared/reference/objectives.md`` §6 and each objective's value on it: the
check that an implementation matches the reference (``python -m lit_kd objectives`` prints it, tests assert it)."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_kd.losses.registry import LossConfig, distillation_loss


def fixed_input() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """objectives.md §6: flattened student/teacher logits ``[10, 32]`` (float64), label tokens, mask."""
    g = torch.Generator().manual_seed(1234)
    zs = torch.randn(2, 5, 32, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(2, 5, 32, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 32, (2, 5), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 0] = False
    mask[1, -1] = False
    return zs.reshape(-1, 32), zt.reshape(-1, 32), target.reshape(-1), mask.reshape(-1)


def fixed_input_values(name: str, dtype: torch.dtype = torch.float64) -> tuple[float, float, float]:
    """Objective ``name`` (default hyperparameters) on ``fixed_input()`` at τ = 1, τ = 3, and τ = 3 with τ²."""
    zs, zt, target, mask = fixed_input()
    values = []
    for tau, scaled in ((1.0, False), (3.0, False), (3.0, True)):
        config = LossConfig(name=name, tau=tau, tau_squared_scaling=scaled)
        values.append(distillation_loss(config, zs.to(dtype), zt.to(dtype), mask=mask, targets=target).item())
    return values[0], values[1], values[2]
