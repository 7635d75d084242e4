"""Adaptive KL: FKL and RKL weighted by the teacher's head/tail gaps [AKL, Wu et al., COLING 2025]."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lit_kd.losses.core import Temperature, kl_from_log_probs, softened


def akl_weights(log_p: Tensor, log_q: Tensor, mu: float) -> tuple[Tensor, Tensor]:
    """Detached (w_head, w_tail), each ``[N]``, from p and q (both already at τ).

    Sort p descending (stable); the head is the ranks whose cumulative mass is ≤ μ, plus rank 1 always;
    the tail is the rest. g_head = Σ_head |p − q|, g_tail = Σ_tail |p − q|, w = g / (g_head + g_tail);
    p = q (both gaps 0) gives ½, ½. Entries masked with −inf have zero mass and no weight.
    """
    with torch.no_grad():
        p, q = log_p.exp(), log_q.exp()
        sorted_p, order = torch.sort(p, dim=-1, descending=True, stable=True)
        head_sorted = sorted_p.cumsum(dim=-1) <= mu
        head_sorted[..., 0] = True
        head = torch.zeros_like(head_sorted).scatter(-1, order, head_sorted)
        gap = (p - q).abs()
        g_head = torch.where(head, gap, torch.zeros_like(gap)).sum(-1)
        g_tail = torch.where(head, torch.zeros_like(gap), gap).sum(-1)
        total = g_head + g_tail
        half = torch.full_like(total, 0.5)
        w_head = torch.where(total > 0, g_head / torch.where(total > 0, total, 1.0), half)
        return w_head, 1.0 - w_head


def akl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Temperature,
    mu: float = 0.5,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """Adaptive KL, ``[N, V] → [N]``: AKL = w_head·FKL + w_tail·RKL (objectives.md §2.8).

    The head gap weights FKL and the tail gap weights RKL; the weights are computed at τ and detached,
    so ∇AKL = w_head·∇FKL + w_tail·∇RKL (a plain ``gradcheck`` fails by design: the weights move).
    """
    log_p, log_q = softened(student_logits, teacher_logits, tau, teacher_tau)
    w_head, w_tail = akl_weights(log_p, log_q, mu)
    return w_head * kl_from_log_probs(log_p, log_q) + w_tail * kl_from_log_probs(log_q, log_p)
