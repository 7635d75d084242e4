"""``python -m lit_kd objectives``: the registry as a table, with each objective's hyperparameters (default and
valid range) and its value on the fixed input of objectives.md §6 (τ = 1, τ = 3, and τ = 3 with τ² scaling),
computed in float32 and float64."""

from __future__ import annotations

import torch

from lit_kd.losses import OBJECTIVES
from lit_kd.losses.reference import fixed_input_values


def objectives() -> None:
    """Print the registry: each objective's hyperparameters (default, valid range), its value on the reference's
    fixed input and its formula.

    The values are those of ``../shared/reference/objectives.md`` §6 (τ = 1, τ = 3, τ = 3 with τ² scaling, float64),
    and float32 at τ = 3: a check that an implementation matches the reference."""
    hparams = {
        name: ", ".join(f"{h.field}={h.default} {h.range_text}" for h in objective.hparams) or "-"
        for name, objective in OBJECTIVES.items()
    }
    width = max(len(text) for text in hparams.values())
    print("objective | hyperparameters (default, range) | tau=1 | tau=3 | tau=3, tau^2 | float32 at tau=3 | formula")
    for name, objective in OBJECTIVES.items():
        t1, t3, t3_scaled = fixed_input_values(name)
        f32 = fixed_input_values(name, torch.float32)[1]
        row = f"{name:7s} | {hparams[name]:{width}s} | {t1:.10f} | {t3:.10f} | {t3_scaled:.10f} | {f32:.8f}"
        print(f"{row} | {objective.formula}")
