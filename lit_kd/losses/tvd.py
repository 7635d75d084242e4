"""Total variation distance."""

from __future__ import annotations

from torch import Tensor

from lit_kd.losses.core import check_logits, log_softmax_at


def tvd(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Total variation distance [DistiLLM, Ko et al. 2024, ``tv_distance``], ``[N, V] → [N]``.

    TVD = ½ Σ_k |p_k − q_k| ∈ [0, 1]. Subgradient (sign(0) = 0):
    ∂TVD/∂z_s,j = (1/(2τ))·q_j·(s_j − Σ_k q_k s_k), s = sign(q − p).
    """
    check_logits(student_logits, teacher_logits)
    p = log_softmax_at(teacher_logits, tau).exp()
    q = log_softmax_at(student_logits, tau).exp()
    return 0.5 * (p - q).abs().sum(dim=-1)
