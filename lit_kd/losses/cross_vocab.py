"""Distillation across vocabularies: any of the objectives, with τ, between a teacher and a student that do not
share a tokenizer, on the groups of ``lit_kd.data.alignment`` and the map of ``lit_kd.models.vocab_map``.

At the start of a group both models have read the same text, so their next-token distributions there are comparable,
each over its own vocabulary: p = softmax(z_t/τ_t) (teacher) and q = softmax(z_s/τ_s) (student) at the group's first
row. A group spells the same string s on both sides, as tokens y_1..y_n (teacher) and y'_1..y'_m (student); by the
chain rule each side gives s the probability of its own path,

    P(s) = Π_i p_i(y_i),   Q(s) = Π_j q_j(y'_j)      (each p_i, q_j softened at its row's τ),

exact for the realized tokenization, not the marginal over every tokenization of s (a lower bound of it). Each side's
distribution at the group start is then read on M + 2 buckets, the same on both sides:

* the matched pairs k of the vocabulary map (entries spelling the same bytes), p(t_k) and q(s_k), except the pair
  holding y_1 and the pair holding y'_1 (their mass belongs to the next two buckets);
* the group's string: P(s) and Q(s);
* the rest: every other entry's probability, plus p(y_1) − P(s) (continuations after y_1 other than the group's),
  and likewise for the student.

Each side's buckets sum to 1, so the selected objective (``per_token_divergence``, its own hyperparameters; DRKL's
label is the group bucket) compares them as distributions, at τ = 1 since p and q are already softened; with
``tau_squared_scaling`` the value is multiplied by τ_s·τ_t of the first rows. Where the two vocabularies coincide
(a relabeling, 1:1 groups) the buckets are the full distributions in another order and the value is the
same-vocabulary objective's (tested). What the buckets cannot see, the shape of the unmatched mass, gets ULD's term
(Boizard et al. 2024): the L1 distance between each side's unmatched probabilities sorted in decreasing order (the
shorter side padded with zeros), weighted by ``uld_weight``. Rows are processed ``chunk_size`` groups at a time.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_kd.data.alignment import GroupRows
from lit_kd.losses.chunked import TokenSums, nonfinite_flags
from lit_kd.losses.core import Temperature, log1mexp, log_softmax_at, upcast
from lit_kd.losses.registry import LossConfig, per_token_divergence, squared_factor
from lit_kd.models.vocab_map import VocabularyMap


@dataclass
class CrossVocabTerm:
    """Per group: ``values`` (the objective on the buckets + uld_weight × ULD), ``matched_mass`` (the teacher's
    probability on the matched and group buckets: how much of its distribution the comparison sees)."""

    values: Tensor
    matched_mass: Tensor


def rows_tau(tau: Temperature, rows: Tensor) -> Temperature:
    """The temperatures of ``rows``: a number as it is, a per-row ``[N]`` tensor indexed."""
    return tau[rows] if isinstance(tau, Tensor) else tau


def realized_log_probs(logits: Tensor, targets: Tensor, tau: Temperature, chunk_size: int) -> Tensor:
    """log softmax(z_r/τ_r)[target_r] of every row, ``chunk_size`` rows at a time (``[N]``)."""
    out = []
    for first in range(0, logits.shape[0], chunk_size):
        rows = torch.arange(first, min(first + chunk_size, logits.shape[0]), device=logits.device)
        log_p = log_softmax_at(logits[rows], rows_tau(tau, rows))
        out.append(log_p.gather(-1, targets[rows].long()[:, None]).squeeze(-1))
    return torch.cat(out) if out else logits.new_zeros(0)


def group_rows(start: Tensor, end: Tensor) -> tuple[Tensor, Tensor]:
    """(every row of the groups ``[start_g, end_g)`` in order, the group each belongs to)."""
    lengths = end - start
    owner = torch.repeat_interleave(torch.arange(start.numel(), device=start.device), lengths)
    first_of_group = torch.cumsum(lengths, 0) - lengths  # where each group's rows begin among all gathered rows
    rows = torch.repeat_interleave(start - first_of_group, lengths) + torch.arange(owner.numel(), device=start.device)
    return rows, owner


def group_sums(values: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Σ_{r ∈ [start_g, end_g)} values_r for every group (exact sums, no cumulative rounding)."""
    rows, owner = group_rows(start, end)
    return values.new_zeros(start.numel()).index_add(0, owner, values[rows])


def pair_lookup(ids: Tensor, size: int) -> Tensor:
    """``[size]``: the pair index of each vocabulary entry, −1 where it has none."""
    lookup = torch.full((size,), -1, dtype=torch.long, device=ids.device)
    lookup[ids] = torch.arange(ids.numel(), device=ids.device)
    return lookup


def buckets(log_p: Tensor, first: Tensor, chain: Tensor, side_ids: Tensor, removed: Tensor) -> tuple[Tensor, Tensor]:
    """One side's ``[G, M + 2]`` bucket log-probabilities (matched pairs, group, rest; see the module docstring) and
    its ``[G, V]`` unmatched probabilities (the rest's entries one by one, p(y_1) − P(s) in y_1's place)."""
    neg_inf = torch.tensor(float("-inf"), dtype=log_p.dtype, device=log_p.device)
    matched = log_p[:, side_ids].masked_fill(removed, neg_inf)
    log_first = log_p.gather(-1, first[:, None]).squeeze(-1)
    tail = chain - log_first  # Σ over the group's later rows of log p (0 for a one-token group)
    multi = tail < 0
    leftover = torch.where(multi, log_first + log1mexp(torch.where(multi, tail, -torch.ones_like(tail))), neg_inf)
    seen = torch.zeros_like(log_p, dtype=torch.bool)
    seen[:, side_ids] = ~removed
    seen.scatter_(-1, first[:, None], True)
    unmatched = log_p.masked_fill(seen, neg_inf).scatter(-1, first[:, None], leftover[:, None])
    rest = torch.logsumexp(unmatched, dim=-1)
    return torch.cat([matched, chain[:, None], rest[:, None]], dim=-1), unmatched.exp()


def sorted_l1(a: Tensor, b: Tensor) -> Tensor:
    """ULD's distance: Σ_k |sort↓(a)_k − sort↓(b)_k| per row, the narrower side padded with zeros."""
    width = max(a.shape[-1], b.shape[-1])
    a = torch.nn.functional.pad(a, (0, width - a.shape[-1]))
    b = torch.nn.functional.pad(b, (0, width - b.shape[-1]))
    return (a.sort(dim=-1, descending=True).values - b.sort(dim=-1, descending=True).values).abs().sum(-1)


def group_chunk_term(
    config: LossConfig,
    student_first: Tensor,
    teacher_first: Tensor,
    student_first_targets: Tensor,
    teacher_first_targets: Tensor,
    chain_s: Tensor,
    chain_t: Tensor,
    vocabulary: VocabularyMap,
    lookups: tuple[Tensor, Tensor],
    uld_weight: float,
    tau_s: Temperature,
    tau_t: Temperature,
) -> tuple[Tensor, Tensor]:
    """(the KD term, the teacher's matched mass) of a chunk of groups, from each side's logits at the groups'
    first rows ``[G, V]``, their targets, the groups' chain log-probabilities and the temperatures of those rows;
    ``lookups``: ``pair_lookup`` of each side (teacher, student)."""
    y_t, y_s = teacher_first_targets.long(), student_first_targets.long()
    removed = torch.zeros(y_t.numel(), vocabulary.matched, dtype=torch.bool, device=teacher_first.device)
    for pair in (lookups[0][y_t], lookups[1][y_s]):
        hit = pair >= 0
        removed[hit.nonzero().squeeze(-1), pair[hit]] = True
    log_p = log_softmax_at(teacher_first, tau_t)
    log_q = log_softmax_at(student_first, tau_s)
    p_buckets, p_unmatched = buckets(log_p, y_t, chain_t, vocabulary.teacher_ids, removed)
    q_buckets, q_unmatched = buckets(log_q, y_s, chain_s, vocabulary.student_ids, removed)
    label = torch.full_like(y_t, vocabulary.matched)  # the group bucket (DRKL's target)
    divergence = per_token_divergence(config, q_buckets, p_buckets, label, tau=1.0)
    if config.tau_squared_scaling:
        divergence = divergence * squared_factor(tau_s, tau_t, divergence.dtype)
    if uld_weight:
        divergence = divergence + uld_weight * sorted_l1(p_unmatched, q_unmatched)
    return divergence, 1.0 - p_buckets[:, -1].exp().detach()


def cross_vocab_term(
    config: LossConfig,
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_targets: Tensor,
    teacher_targets: Tensor,
    groups: GroupRows,
    vocabulary: VocabularyMap,
    uld_weight: float = 1.0,
    tau: Optional[Temperature] = None,
    teacher_tau: Optional[Temperature] = None,
    chunk_size: int = 512,
) -> CrossVocabTerm:
    """The KD term of every group (see the module docstring). Logits are each side's response rows (``[N_s, V_s]``,
    ``[N_t, V_t]``, real vocabulary entries only), targets its response tokens; ``tau``/``teacher_tau``: numbers or
    per-row tensors (default ``config.tau``)."""
    tau_s = config.tau if tau is None else tau
    tau_t = tau_s if teacher_tau is None else teacher_tau
    chain_t = group_sums(
        realized_log_probs(teacher_logits, teacher_targets, tau_t, chunk_size), groups.teacher_start, groups.teacher_end
    )
    chain_s = group_sums(
        realized_log_probs(student_logits, student_targets, tau_s, chunk_size), groups.student_start, groups.student_end
    )
    lookups = (pair_lookup(vocabulary.teacher_ids.to(teacher_logits.device), teacher_logits.shape[-1]),
               pair_lookup(vocabulary.student_ids.to(student_logits.device), student_logits.shape[-1]))  # fmt: skip
    values, matched_mass = [], []
    for first in range(0, len(groups), chunk_size):
        chunk = slice(first, min(first + chunk_size, len(groups)))
        rows_t, rows_s = groups.teacher_start[chunk], groups.student_start[chunk]
        value, mass = group_chunk_term(
            config, student_logits[rows_s], teacher_logits[rows_t], student_targets[rows_s], teacher_targets[rows_t],
            chain_s[chunk], chain_t[chunk], vocabulary, lookups, uld_weight, rows_tau(tau_s, rows_s),
            rows_tau(tau_t, rows_t),
        )  # fmt: skip
        values.append(value)
        matched_mass.append(mass)
    empty = student_logits.new_zeros(0)
    return CrossVocabTerm(torch.cat(values) if values else empty, torch.cat(matched_mass) if matched_mass else empty)


def cross_vocab_token_sums(
    config: LossConfig,
    student_logits: Tensor,
    teacher_logits: Optional[Tensor],
    student_targets: Tensor,
    teacher_targets: Optional[Tensor],
    groups: Optional[GroupRows],
    vocabulary: Optional[VocabularyMap],
    kd_ratio: float,
    uld_weight: float = 1.0,
    chunk_size: int = 512,
    diagnostics: bool = False,
) -> TokenSums:
    """A micro-batch's sums for a cross-tokenizer pair: Σ_i (1 − r)·CE_i over the student's response tokens plus
    r·Σ_g d_g over the aligned groups (``cross_vocab_term``), counted in student tokens (the step divides by them).
    With identical tokenizers every group is one token and the sums are ``token_sums_from_logits``'s (tested).
    ``diagnostics``: ``matched_mass``, the teacher's probability on the buckets the comparison sees, per group."""
    kd_on = teacher_logits is not None and kd_ratio > 0
    with torch.no_grad() if kd_on and kd_ratio == 1 else nullcontext():  # CE only logged: no graph
        ce = F.cross_entropy(upcast(student_logits), student_targets, reduction="none")
    kd_loss, diag = None, None
    loss = ce.sum()
    if kd_on:
        assert groups is not None and vocabulary is not None and teacher_targets is not None
        term = cross_vocab_term(config, student_logits, teacher_logits, student_targets, teacher_targets, groups,
                                vocabulary, uld_weight, chunk_size=chunk_size)  # fmt: skip
        kd_loss = term.values.sum()
        loss = kd_loss if kd_ratio == 1 else (1.0 - kd_ratio) * loss + kd_ratio * kd_loss
        kd_loss = kd_loss.detach()
        if diagnostics:
            diag = {"matched_mass": term.matched_mass.mean() if len(groups) else term.matched_mass.new_zeros(())}
    return TokenSums(
        loss=loss,
        lm_loss=ce.detach().sum(),
        kd_loss=kd_loss,
        tokens=int(student_targets.numel()),
        nonfinite=nonfinite_flags(student_logits.detach(), teacher_logits),
        diagnostics=diag,
        step_tau=config.tau if kd_on else None,
    )
