"""The alpha-beta divergence [AB, Wang et al., ABKD, ICML 2025; Cichocki, Cruces & Amari, Entropy 2011]."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lit_kd.losses.core import Temperature, softened


def ab(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    alpha: float = 0.2,
    beta: float = 0.7,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """AB-divergence D_AB^(α,β)(p‖q), ``[N, V] → [N]`` (objectives.md §2.9):

        −1/(αβ) · Σ_k [p^α q^β − α/(α+β)·p^(α+β) − β/(α+β)·q^(α+β)]      α, β, α+β ≠ 0
        (1/β²)·Σ [q^β log(q^β/p^β) − q^β + p^β]                          α = 0
        (1/α²)·Σ [p^α log(p^α/q^α) − p^α + q^α]                          β = 0
        (1/α²)·Σ [log(q^α/p^α) + p^α/q^α − 1]                            α = −β ≠ 0
        ½·Σ (log p − log q)²                                             α = β = 0

    The limits are the continuous ones (1/β², 1/α²; the ABKD code's 1/β, 1/α differ). (1, 0) is FKL,
    (0, 1) is RKL. Powers are taken in log space (x^a = exp(a·log x)); entries masked with −inf in both
    models drop out. Negative exponents need finite logits.
    Gradient (α ≠ 0): (1/(α·τ))·(c_j − q_j·Σ_k c_k), c_k = q_k^(α+β) − p_k^α q_k^β.
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    dropped = torch.isneginf(log_p) & torch.isneginf(log_q)
    log_p = torch.where(dropped, torch.zeros_like(log_p), log_p)
    log_q = torch.where(dropped, torch.zeros_like(log_q), log_q)
    if alpha == 0 and beta == 0:
        terms = 0.5 * (log_p - log_q) ** 2
    elif alpha == 0:
        q_b, p_b = torch.exp(beta * log_q), torch.exp(beta * log_p)
        terms = (q_b * beta * (log_q - log_p) - q_b + p_b) / beta**2
    elif beta == 0:
        p_a, q_a = torch.exp(alpha * log_p), torch.exp(alpha * log_q)
        terms = (p_a * alpha * (log_p - log_q) - p_a + q_a) / alpha**2
    elif alpha + beta == 0:
        terms = (alpha * (log_q - log_p) + torch.exp(alpha * (log_p - log_q)) - 1.0) / alpha**2
    else:
        s = alpha + beta
        mixed = torch.exp(alpha * log_p + beta * log_q)
        terms = -(mixed - alpha / s * torch.exp(s * log_p) - beta / s * torch.exp(s * log_q)) / (alpha * beta)
    return torch.where(dropped, torch.zeros_like(terms), terms).sum(dim=-1)
