"""The cross-vocabulary step through the LM heads, chunk by chunk: the sums of ``cross_vocab_token_sums`` with its
gradient, from each side's final hidden states and head, with at most ``chunk_size`` rows of either side's logits
alive at a time (never the ``[N_s, V_s]`` and ``[N_t, V_t]`` pair).

The loss is L = Σ_i (1 − r)·CE_i + r·Σ_g d_g(z_s at the group's first row, C_g), where the group's chain term
C_g = Σ_{i∈g} ℓ_i, ℓ_i = log softmax(z_s,i/τ)[y_i], couples every row of the group. Three passes:

1. no graph: each row's ℓ_i (and each teacher row's), summed into the chains C_g;
2. per chunk of groups, autograd on the chunk alone: d_g from the first rows' logits and the chains (leaves), giving
   ∂L/∂z at the first rows and ∂L/∂C_g, which every row of the group receives as ∂L/∂ℓ_i;
3. no graph: each row's ∂L/∂z = ∂L/∂ℓ_i · (onehot(y_i) − softmax(z_i/τ))/τ + (1 − r)(softmax(z_i) − onehot(y_i)),
   the closed form of both terms.

∂L/∂z of every chunk flows into the hidden rows and the head by two matmuls; ``_PrecomputedGradient`` hands the
result to autograd, as in ``lit_kd.losses.chunked``. Values and gradients equal the full-logits path's (tested).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_kd.data.alignment import GroupRows
from lit_kd.losses.chunked import TokenSums, _PrecomputedGradient, nonfinite_flags
from lit_kd.losses.core import upcast
from lit_kd.losses.cross_vocab import group_chunk_term, group_rows, group_sums, pair_lookup
from lit_kd.losses.registry import LossConfig
from lit_kd.models.head import OutputHead
from lit_kd.models.vocab_map import VocabularyMap


def realized_rows(
    hidden: Tensor, head: OutputHead, targets: Tensor, tau: float, chunk_size: int, with_ce: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """(ℓ_i = log softmax(z_i/τ)[y_i], CE_i = −log softmax(z_i)[y_i] (empty without ``with_ce``), the non-finite
    flags) of every row, without a graph, ``chunk_size`` rows at a time."""
    realized, ce = [], []
    flags = torch.zeros(2, dtype=torch.bool, device=hidden.device)
    with torch.no_grad():
        for first in range(0, hidden.shape[0], chunk_size):
            logits = upcast(head.logits(hidden[first : first + chunk_size]))
            index = targets[first : first + chunk_size].long()[:, None]
            realized.append(torch.log_softmax(logits / tau, dim=-1).gather(-1, index).squeeze(-1))
            if with_ce:
                ce.append(-torch.log_softmax(logits, dim=-1).gather(-1, index).squeeze(-1))
            flags |= nonfinite_flags(logits, None)[:2]
    empty = hidden.new_zeros(0, dtype=torch.float32)
    return (torch.cat(realized) if realized else empty), (torch.cat(ce) if ce else empty), flags


def chunked_cross_vocab_token_sums(
    config: LossConfig,
    student_hidden: Tensor,
    student_head: OutputHead,
    teacher_hidden: Optional[Tensor],
    teacher_head: Optional[OutputHead],
    student_targets: Tensor,
    teacher_targets: Optional[Tensor],
    groups: Optional[GroupRows],
    vocabulary: Optional[VocabularyMap],
    kd_ratio: float,
    uld_weight: float = 1.0,
    chunk_size: int = 512,
    diagnostics: bool = False,
) -> TokenSums:
    """``cross_vocab_token_sums`` through the heads (see the module docstring); τ is the step's number."""
    tau, weight, bias = float(config.tau), student_head.weight, student_head.bias
    needs_grad = torch.is_grad_enabled() and (student_hidden.requires_grad or weight.requires_grad)
    kd_on = teacher_hidden is not None and teacher_head is not None and kd_ratio > 0
    realized, ce, student_flags = realized_rows(student_hidden, student_head, student_targets, tau, chunk_size)
    nonfinite = torch.cat([student_flags, torch.zeros(2, dtype=torch.bool, device=student_flags.device)])
    grad_row = torch.zeros_like(realized)  # ∂L/∂ℓ_i, from the chains
    grad_hidden = torch.zeros_like(student_hidden) if needs_grad else None
    head_grad = needs_grad and weight.requires_grad  # a frozen head (adapters on the student): no [V, d] gradient
    grad_weight = torch.zeros_like(weight) if head_grad else None
    grad_bias = torch.zeros_like(bias) if head_grad and bias is not None and bias.requires_grad else None
    kd_loss, matched, total = None, [], (1.0 - kd_ratio) * ce.sum() if kd_on else ce.sum()

    def backpropagate(rows: Tensor, grad_logits: Tensor) -> None:
        """∂L/∂z of ``rows`` into the hidden rows and the head."""
        vocab = grad_logits.shape[-1]
        grad_logits = grad_logits.to(weight.dtype)
        grad_hidden.index_add_(0, rows, (grad_logits @ weight[:vocab]).to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight[:vocab] += grad_logits.T @ student_hidden[rows].to(weight.dtype)
        if grad_bias is not None:
            grad_bias[:vocab] += grad_logits.sum(0)

    if kd_on:
        assert groups is not None and vocabulary is not None and teacher_targets is not None
        teacher_realized, _, teacher_flags = realized_rows(teacher_hidden, teacher_head, teacher_targets, tau,
                                                           chunk_size, with_ce=False)  # fmt: skip
        nonfinite[2:] = teacher_flags
        chain_t = group_sums(teacher_realized, groups.teacher_start, groups.teacher_end)
        chain_s = group_sums(realized, groups.student_start, groups.student_end)
        lookups = (pair_lookup(vocabulary.teacher_ids, teacher_head.vocab_size or teacher_head.weight.shape[0]),
                   pair_lookup(vocabulary.student_ids, student_head.vocab_size or weight.shape[0]))  # fmt: skip
        kd_loss = torch.zeros((), dtype=realized.dtype, device=realized.device)
        for first in range(0, len(groups), chunk_size):
            chunk = slice(first, min(first + chunk_size, len(groups)))
            rows_t, rows_s = groups.teacher_start[chunk], groups.student_start[chunk]
            with torch.no_grad():
                teacher_first = teacher_head.logits(teacher_hidden[rows_t])
            with torch.enable_grad():
                student_first = student_head.logits(student_hidden[rows_s]).detach().requires_grad_(needs_grad)
                chain = chain_s[chunk].detach().requires_grad_(needs_grad)
                values, mass = group_chunk_term(
                    config, student_first, teacher_first, student_targets[rows_s], teacher_targets[rows_t], chain,
                    chain_t[chunk], vocabulary, lookups, uld_weight, tau, tau,
                )  # fmt: skip
                if needs_grad:
                    grad_first, grad_chain = torch.autograd.grad(kd_ratio * values.sum(), [student_first, chain])
            kd_loss += values.detach().sum()
            matched.append(mass)
            if needs_grad:
                backpropagate(rows_s, grad_first)
                members, owner = group_rows(rows_s, groups.student_end[chunk])  # each row gets its group's ∂L/∂C_g
                grad_row.index_add_(0, members, grad_chain[owner])
            del teacher_first, student_first
        total = total + kd_ratio * kd_loss
    if needs_grad:
        ce_weight = (1.0 - kd_ratio) if kd_on else 1.0
        with torch.no_grad():
            for first in range(0, student_hidden.shape[0], chunk_size):
                rows = torch.arange(first, min(first + chunk_size, student_hidden.shape[0]), device=grad_row.device)
                logits = upcast(student_head.logits(student_hidden[rows]))
                onehot = F.one_hot(student_targets[rows].long(), logits.shape[-1]).to(logits.dtype)
                grad = ce_weight * (torch.softmax(logits, dim=-1) - onehot)
                if kd_on:
                    grad += grad_row[rows, None] * (onehot - torch.softmax(logits / tau, dim=-1)) / tau
                backpropagate(rows, grad)
                del logits, onehot, grad
    loss = total.detach()
    if needs_grad:
        loss = _PrecomputedGradient.apply(loss, student_hidden, weight, bias, grad_hidden, grad_weight, grad_bias)
    diag = None
    if diagnostics and kd_on:
        masses = torch.cat(matched) if matched else realized.new_zeros(0)
        diag = {"matched_mass": masses.mean() if masses.numel() else masses.new_zeros(())}
    return TokenSums(
        loss=loss,
        lm_loss=ce.sum(),
        kd_loss=kd_loss,
        tokens=int(student_targets.numel()),
        nonfinite=nonfinite,
        diagnostics=diag,
        step_tau=config.tau if kd_on else None,
    )
