"""``python -m lit_kd objectives``: the registry as a table, with each objective's value on the fixed
input of objectives.md §6 (τ = 1, τ = 3, and τ = 3 with τ² scaling), computed in float32 and float64."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_kd.losses import OBJECTIVES, LossConfig, distillation_loss


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
    zs, zt, target, mask = fixed_input()
    values = []
    for tau, scaled in ((1.0, False), (3.0, False), (3.0, True)):
        config = LossConfig(name=name, tau=tau, tau_squared_scaling=scaled)
        values.append(distillation_loss(config, zs.to(dtype), zt.to(dtype), mask=mask, targets=target).item())
    return values[0], values[1], values[2]


def objectives() -> None:
    """Print the registry: each objective's hyperparameters, its value on the reference's fixed input and its formula.

    The values are those of ``../shared/reference/objectives.md`` §6 (τ = 1, τ = 3, τ = 3 with τ² scaling, float64),
    and float32 at τ = 3: a check that an implementation matches the reference."""
    defaults = LossConfig()
    print("objective | hyperparameters (default) | tau=1 | tau=3 | tau=3, tau^2 | float32 at tau=3 | formula")
    for name, objective in OBJECTIVES.items():
        hparams = ", ".join(f"{field}={getattr(defaults, field)}" for field in objective.hparams.values()) or "-"
        t1, t3, t3_scaled = fixed_input_values(name)
        f32 = fixed_input_values(name, torch.float32)[1]
        print(f"{name:7s} | {hparams:28s} | {t1:.10f} | {t3:.10f} | {t3_scaled:.10f} | {f32:.8f} | {objective.formula}")
