"""A plugin objective, registered at import the way a user's module would do it: one function, one ``register``
call. ``python -m tests.losses.toy_objective ARGS`` is ``python -m lit_kd ARGS`` with it registered."""

from __future__ import annotations

import sys

from torch import Tensor

from lit_kd.losses import HParam, Objective, fkl, register


def toy(student_logits: Tensor, teacher_logits: Tensor, tau: float, scale: float = 1.0) -> Tensor:
    """Toy objective, ``[N, V] → [N]``: FKL scaled by ``scale`` (Eq. none; for the registry's tests)."""
    return scale * fkl(student_logits, teacher_logits, tau)


register(
    Objective(
        "toy",
        toy,
        "s·KL(p‖q)",
        [HParam("toy_scale", "scale", 1.0, "the factor s on FKL.", low=0.0, high=10.0, open_low=True)],
    )
)

if __name__ == "__main__":
    from lit_kd.cli import main

    main(sys.argv[1:])
