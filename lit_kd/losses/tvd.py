"""Total variation distance."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from lit_kd.losses.core import Temperature, softened


def tvd(
    student_logits: Tensor, teacher_logits: Tensor, tau: Temperature, teacher_tau: Optional[Temperature] = None
) -> Tensor:
    """Total variation distance [DistiLLM, Ko et al. 2024, ``tv_distance``], ``[N, V] → [N]``.

    TVD = ½ Σ_k |p_k − q_k| ∈ [0, 1]. Subgradient (sign(0) = 0):
    ∂TVD/∂z_s,j = (1/(2τ))·q_j·(s_j − Σ_k q_k s_k), s = sign(q − p).
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
