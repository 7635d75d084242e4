"""Mixture-based objectives: generalized JSD (GKD), skew FKL and skew RKL (DistiLLM).

Mixtures are formed in log space (``safe_logaddexp``) and are not detached, so that probabilities that
underflow in float32 and vocabulary entries masked with −inf give finite values and gradients
(the public DistiLLM code gives NaN for both; objectives.md §4.3).
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from lit_kd.losses.core import Temperature, kl_from_log_probs, safe_logaddexp, softened


def _log_mixture(log_x: Tensor, log_y: Tensor, weight_x: float) -> Tensor:
    """log(w·x + (1 − w)·y) for w ∈ [0, 1]."""
    log_w = math.log(weight_x) if weight_x > 0 else float("-inf")
    log_1mw = math.log1p(-weight_x) if weight_x < 1 else float("-inf")
    return safe_logaddexp(log_x + log_w, log_y + log_1mw)


def js(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    beta: float = 0.1,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """Generalized Jensen–Shannon divergence [GKD, Agarwal et al. 2024, Eq. 1], ``[N, V] → [N]``.

    JSD(β) = β·KL(p‖M) + (1 − β)·KL(q‖M),  M = β·p + (1 − β)·q,  0 < β < 1.
    0 ≤ JSD(β) ≤ −β log β − (1 − β) log(1 − β). β = 0.5 is the classical JSD; the default β = 0.1 is what
    DistiLLM's ``js_distance`` computes when called as in its ``finetune.py`` (objectives.md §2.4).
    Gradient: ((1 − β)/τ)·q_j·(log(q_j/M_j) − KL(q‖M)).
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * kl_from_log_probs(log_p, log_m) + (1.0 - beta) * kl_from_log_probs(log_q, log_m)


def sfkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    alpha: float = 0.1,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """Skew forward KL [DistiLLM, Ko et al. 2024, skew KLD], ``[N, V] → [N]``.

    SFKL_α = KL(p ‖ α·p + (1 − α)·q), the mixture not detached; α = 0 gives FKL; 0 ≤ SFKL_α ≤ log(1/α).
    Gradient, r = p/m: ((1 − α)/τ)·q_j·(Σ_k q_k r_k − r_j). (DistiLLM's ``skewed_forward_kl`` returns
    SFKL_α + H(p).)
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    return kl_from_log_probs(log_p, _log_mixture(log_p, log_q, alpha))


def srkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    alpha: float = 0.1,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """Skew reverse KL [DistiLLM, Ko et al. 2024, skew RKLD], ``[N, V] → [N]``.

    SRKL_α = KL(q ‖ (1 − α)·p + α·q), the mixture not detached; α = 0 gives RKL; 0 ≤ SRKL_α ≤ log(1/α).
    Gradient: (1/τ)·q_j·(h_j − Σ_k q_k h_k), h_k = log(q_k/m'_k) − α·q_k/m'_k.
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    return kl_from_log_probs(log_q, _log_mixture(log_q, log_p, alpha))
