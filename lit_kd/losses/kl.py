"""Forward and reverse KL at temperature τ (Luong & Chen 2026, Eqs. 1–4)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from lit_kd.losses.core import Temperature, kl_from_log_probs, softened


def fkl(
    student_logits: Tensor, teacher_logits: Tensor, tau: Temperature, teacher_tau: Optional[Temperature] = None
) -> Tensor:
    """Forward KL, ``[N, V] → [N]``.

    FKL = KL(p‖q) = Σ_k p_k (log p_k − log q_k),  p = softmax(z_t/τ), q = softmax(z_s/τ).
    Gradient [T Eq. 2]: ∂FKL/∂z_s,j = (q_j − p_j)/τ.
    A true divergence (FKL(p, p) = 0); DistiLLM's ``forward_kl`` returns FKL + H(p). With τ_t ≠ τ_s
    (``teacher_tau``) the gradient is (q_j − p_j)/τ_s, p at τ_t.
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    return kl_from_log_probs(log_p, log_q)


def rkl(
    student_logits: Tensor, teacher_logits: Tensor, tau: Temperature, teacher_tau: Optional[Temperature] = None
) -> Tensor:
    """Reverse KL, ``[N, V] → [N]``.

    RKL = KL(q‖p) = Σ_k q_k (log q_k − log p_k).
    Gradient [T Eq. 3]: ∂RKL/∂z_s,j = (q_j/τ)(log(q_j/p_j) − RKL) = (q_j/τ²)(Δ_j − E_q[Δ]), Δ = z_s − z_t
    [T Eq. 4, Prop. 2.2].
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    return kl_from_log_probs(log_q, log_p)


def sym_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    weight: float = 0.5,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """Symmetric KL, ``[N, V] → [N]``: w·FKL + (1 − w)·RKL, w = ``weight`` (default 0.5, [T] App. A).

    Gradient: w·(q − p)/τ + (1 − w)·(q/τ)(log(q/p) − RKL). (DistiLLM's unused ``symmetric_kl(lam=0.9)``
    is w = 0.1 plus (1 − lam)·H(p); objectives.md §2.3.)
    """
    forward = fkl(student_logits, teacher_logits, tau, teacher_tau)
    return weight * forward + (1.0 - weight) * rkl(student_logits, teacher_logits, tau, teacher_tau)
