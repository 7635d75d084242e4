"""Forward and reverse KL at temperature τ (Luong & Chen 2026, Eqs. 1–4)."""

from __future__ import annotations

from torch import Tensor

from lit_kd.losses.core import check_logits, kl_from_log_probs, log_softmax_at


def fkl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Forward KL, ``[N, V] → [N]``.

    FKL = KL(p‖q) = Σ_k p_k (log p_k − log q_k),  p = softmax(z_t/τ), q = softmax(z_s/τ).
    Gradient [T Eq. 2]: ∂FKL/∂z_s,j = (q_j − p_j)/τ.
    A true divergence (FKL(p, p) = 0); DistiLLM's ``forward_kl`` returns FKL + H(p).
    """
    check_logits(student_logits, teacher_logits)
    return kl_from_log_probs(log_softmax_at(teacher_logits, tau), log_softmax_at(student_logits, tau))


def rkl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Reverse KL, ``[N, V] → [N]``.

    RKL = KL(q‖p) = Σ_k q_k (log q_k − log p_k).
    Gradient [T Eq. 3]: ∂RKL/∂z_s,j = (q_j/τ)(log(q_j/p_j) − RKL) = (q_j/τ²)(Δ_j − E_q[Δ]), Δ = z_s − z_t
    [T Eq. 4, Prop. 2.2].
    """
    check_logits(student_logits, teacher_logits)
    return kl_from_log_probs(log_softmax_at(student_logits, tau), log_softmax_at(teacher_logits, tau))


def sym_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float, weight: float = 0.5) -> Tensor:
    """Symmetric KL, ``[N, V] → [N]``: w·FKL + (1 − w)·RKL, w = ``weight`` (default 0.5, [T] App. A).

    Gradient: w·(q − p)/τ + (1 − w)·(q/τ)(log(q/p) − RKL). (DistiLLM's unused ``symmetric_kl(lam=0.9)``
    is w = 0.1 plus (1 − lam)·H(p); objectives.md §2.3.)
    """
    return weight * fkl(student_logits, teacher_logits, tau) + (1.0 - weight) * rkl(student_logits, teacher_logits, tau)
