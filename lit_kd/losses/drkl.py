"""Diversity-aware RKL [DR, Luong, Tran & Chen, arXiv 2604.00223] — a reconstruction (objectives.md §2.10)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lit_kd.losses.core import Temperature, kl_from_log_probs, log1mexp, softened


def drkl_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    targets: Tensor,
    teacher_tau: Optional[Temperature] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(KL(b_q‖b_p), KL(q̂‖p̂), q_t), each ``[N]``.

    t = ``targets`` (the label token); b_x = (x_t, 1 − x_t); x̂_k = x_k/(1 − x_t) for k ≠ t.
    Exact identity: RKL = KL(b_q‖b_p) + (1 − q_t)·KL(q̂‖p̂). log(1 − x_t) = log1mexp(log x_t), with
    log x_t clamped to ≤ −eps (undefined when x_t = 1 exactly).
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    if targets.shape != student_logits.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} must hold one label per row of {tuple(student_logits.shape)}")
    eps = torch.finfo(log_p.dtype).eps
    index = targets.long()[:, None]
    log_p_t = log_p.gather(-1, index).clamp(max=-eps)
    log_q_t = log_q.gather(-1, index).clamp(max=-eps)
    log_1m_p, log_1m_q = log1mexp(log_p_t), log1mexp(log_q_t)
    binary = kl_from_log_probs(torch.cat([log_q_t, log_1m_q], -1), torch.cat([log_p_t, log_1m_p], -1))

    is_target = torch.zeros_like(log_p, dtype=torch.bool).scatter(-1, index, True)
    minus_inf = torch.full_like(log_p, float("-inf"))
    log_p_hat = torch.where(is_target, minus_inf, log_p - log_1m_p)
    log_q_hat = torch.where(is_target, minus_inf, log_q - log_1m_q)
    return binary, kl_from_log_probs(log_q_hat, log_p_hat), log_q_t.squeeze(-1).exp()


def drkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    targets: Tensor,
    gamma: float = 0.5,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """DRKL = KL(b_q‖b_p) + γ·KL(q̂‖p̂), ``[N, V] → [N]``, t = the label token.

    RKL weighs the non-target term by (1 − q_t), which keeps pushing the target logit even once the
    student matches the teacher; DRKL replaces that weight with a constant γ > 0.
    γ = 0.5 is PROVISIONAL: taken from a third-party replication, not yet checked against [DR]'s Eq. 9
    and its γ table (objectives.md §2.10, §7).
    Gradient: (1/τ)·[ℓ·q_t·(δ_jt − q_j) + γ·1[j≠t]·q̂_j·(log(q̂_j/p̂_j) − KL(q̂‖p̂))],
    ℓ = log(q_t/p_t) − log((1 − q_t)/(1 − p_t)).
    """
    binary, non_target, _ = drkl_terms(student_logits, teacher_logits, tau, targets, teacher_tau)
    return binary + gamma * non_target
