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
    p = q (both gaps 0) gives ½, ½. Entries masked with −inf have zero mass and no weight. μ ≥ 1 makes every
    entry head (a running mass that rounds above 1 would otherwise drop the last ranks).
    """
    with torch.no_grad():
        p, q = log_p.exp(), log_q.exp()
        sorted_p, order = torch.sort(p, dim=-1, descending=True, stable=True)
        head_sorted = sorted_p.cumsum(dim=-1) <= mu if mu < 1 else torch.ones_like(sorted_p, dtype=torch.bool)
        head_sorted[..., 0] = True
        head = torch.zeros_like(head_sorted).scatter(-1, order, head_sorted)
        gap = (p - q).abs()
        g_head = torch.where(head, gap, torch.zeros_like(gap)).sum(-1)
        g_tail = torch.where(head, torch.zeros_like(gap), gap).sum(-1)
        total = g_head + g_tail
        half = torch.full_like(total, 0.5)
        w_head = torch.where(total > 0, g_head / torch.where(total > 0, total, 1.0), half)
        return w_head, 1.0 - w_head


HEAD_BINS = 4096
"""``akl_head_weight`` ranks the vocabulary into this many bins of log p (a row's span split evenly)."""

HEAD_SPAN = 48.0
"""At most this many nats below a row's top log p are binned finely; lower entries (mass < V·e^−48) share the last
bin, and −inf entries too."""

BIN_MEMBERS_LIMIT = 1024
"""Rows whose boundary bin holds more members than this (a near-constant p, or μ ≈ 1) take the sort."""


def akl_head_weight(log_p: Tensor, p: Tensor, q: Tensor, mu: float) -> Tensor:
    """w_head ``[N]`` of ``akl_weights`` without sorting the vocabulary: the same head, found by selection.

    The head is the longest prefix of p sorted descending (stable) whose cumulative mass is ≤ μ, plus rank 1.
    Binning log p by its distance below the row's top (``HEAD_BINS`` bins over at most ``HEAD_SPAN`` nats) keeps
    that order across bins, so the bins' masses locate the boundary bin b* (the first whose running mass exceeds
    μ): every bin before b* is head, every bin after it tail, and only b*'s few members are ordered — by p
    descending, then index ascending, the stable sort's order — to finish the prefix. Equal to the sort up to the
    rounding of the running mass; rows that are not finite, or whose boundary bin is crowded, take the sort.
    ``log_p`` ``[N, V]`` (at τ), ``p`` its exponential and ``q`` the student's probabilities; detached.
    """
    with torch.no_grad():
        rows = p.shape[0]
        top = log_p.amax(-1, keepdim=True)
        span = (top - log_p.amin(-1, keepdim=True)).clamp_(max=HEAD_SPAN)  # −inf entries: the full span
        finite = (torch.isfinite(top) & torch.isfinite(span)).squeeze(-1)
        scale = torch.where(finite[:, None] & (span > 0), (HEAD_BINS - 1) / span.clamp(min=1e-30), 0.0)
        bins = (top - log_p).mul_(scale).clamp_(0, HEAD_BINS - 1)
        if not finite.all():
            bins.nan_to_num_(0.0)  # a non-finite row: one bin, then the sort below
        bins = bins.add_(1).long()  # 1..HEAD_BINS, top first; bin 0 stays empty
        gap = (p - q).abs_()
        mass = p.new_zeros(rows, HEAD_BINS + 1).scatter_add_(-1, bins, p).cumsum_(-1)  # [:, b]: mass of bins ≤ b
        gaps = p.new_zeros(rows, HEAD_BINS + 1).scatter_add_(-1, bins, gap).cumsum_(-1)
        crossing = mass > mu if mu < 1 else torch.zeros_like(mass, dtype=torch.bool)
        edge = torch.where(crossing.any(-1), crossing.byte().argmax(-1), HEAD_BINS + 1)  # b*; none: all is head
        above = (edge - 1).clamp(max=HEAD_BINS)[:, None]
        head, before = gaps.gather(-1, above).squeeze(-1), mass.gather(-1, above)  # the bins before b*
        row, column = (bins == edge[:, None]).nonzero(as_tuple=True)  # b*'s members, row-major: index ascending
        counts = torch.bincount(row, minlength=rows)
        crowded = (counts > BIN_MEMBERS_LIMIT) | ~finite
        if crowded.any():
            kept = ~crowded[row]
            row, column, counts = row[kept], column[kept], counts.masked_fill(crowded, 0)
        k = int(counts.max()) if rows else 0
        if k:  # the members in slots by index ascending, then by p descending: the stable sort's order
            slot = torch.arange(row.numel(), device=p.device) - (counts.cumsum(0) - counts)[row]
            values = p.new_full((rows, k), -1.0)
            index = torch.zeros(rows, k, dtype=torch.long, device=p.device)
            values[row, slot], index[row, slot] = p[row, column], column
            values, order = values.sort(dim=-1, descending=True, stable=True)
            index = index.gather(-1, order)
            member = values >= 0
            inside = member & (before + values.clamp(min=0).cumsum(-1) <= mu)
            inside[:, 0] |= member[:, 0] & (edge == 1)  # rank 1 is always head
            head = head + torch.where(inside, gap.gather(-1, index), 0.0).sum(-1)
        total = gaps[:, -1]
        w_head = torch.where(total > 0, head / torch.where(total > 0, total, 1.0), 0.5)
        if crowded.any():
            w_head[crowded] = akl_weights(log_p[crowded], q[crowded].log(), mu)[0]
        return w_head


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
