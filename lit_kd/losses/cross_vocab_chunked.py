"""The cross-vocabulary step through the LM heads, chunk by chunk: the sums of ``cross_vocab_token_sums`` with its
gradient, from each side's final hidden states and head, with a chunk's rows of either side's logits alive at a
time (never the ``[N_s, V_s]`` and ``[N_t, V_t]`` pair).

The loss is L = Σ_i (1 − r)·CE_i + r·Σ_g d_g(log q at the group's first row, C_g), where the chain
C_g = Σ_{i∈g} ℓ_i, ℓ_i = log softmax(z_s,i/τ)[y_i], couples every row of the group. The chunks are cut at group
boundaries (``chunk_plan``: at most ``chunk_size`` rows of each side, unless one group is longer), so every chain is
complete within its chunk, and each chunk takes one pass: each side's logits are made once (one matmul per side),
and from them

* ℓ_i, CE_i and the chains C_g (both sides), then each side's buckets and unmatched probabilities at the first rows
  (``side_buckets``: the first rows, then the pairs' and the unpaired entries' columns, gathered into buffers that
  are reused from chunk to chunk, ``Buffers``: a fresh ``[G, V]`` block costs its page faults every time);
* d_g and ∂d/∂(bucket log-probabilities) by the objective's fused kernel (``lit_kd.losses.fused``) on the
  ``[G, M + 2]`` buckets at τ = 1 (autograd on those buckets for an objective without a kernel);
* ULD's sorted L1 and its subgradient by selection (``sorted_l1_and_grad``: the wider side's k largest entries,
  k = the narrower width, and the sum of the others, instead of two full sorts padded to the wider width; the
  unmatched entries only, M fewer per side);
* the closed-form ∂L/∂z of every student row. With ℓ_i's q_τ = softmax(z_i/τ), B the student's buckets (kept pairs
  log q(s_k), group C, rest log R with R = Σ_{j unmatched} b_j, b_{y_1} = q(y_1) − e^C in multi-row groups), G = ∂d/∂B
  and h = ∂ULD/∂b:

      ∂d/∂C = G_group − [multi]·e^C·(G_rest/R + w·h_{y_1})
      u_j   = ∂d/∂log q_j at the first row: G_k at s_k,  b_j·(G_rest/R + w·h_j) at unmatched j (q(y_1) for y_1)
      ∂L/∂z_i = (1 − r)(softmax(z_i) − e_{y_i}) + (r/τ)·∂d/∂C_g·(e_{y_i} − q_τ,i)
                + [i first row of g] (r/τ)·(u − q_τ,i·Σ_j u_j),

  (w = ``uld_weight``), written into the chunk's student block in place.

∂L/∂z of every chunk flows into the hidden rows and the head by two matmuls; ``_PrecomputedGradient`` hands the
result to autograd, as in ``lit_kd.losses.chunked``. Values and gradients equal the full-logits path's (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from lit_kd.data.alignment import GroupRows
from lit_kd.losses.chunked import TokenSums, _PrecomputedGradient, accumulate_gradients, logits_into
from lit_kd.losses.core import log1mexp
from lit_kd.losses.fused import KERNELS, SCRATCH, kernel_arguments
from lit_kd.losses.registry import LossConfig, per_token_divergence
from lit_kd.models.head import OutputHead
from lit_kd.models.vocab_map import VocabularyMap


@dataclass(frozen=True)
class Chunk:
    """Rows ``[student)`` and ``[teacher)`` of each side and the groups ``[groups)`` that lie within them."""

    student: slice
    teacher: slice
    groups: slice


def chunk_plan(groups: Optional[GroupRows], rows_s: int, rows_t: int, size: int) -> list[Chunk]:
    """Consecutive chunks covering every row of both sides, cut at group boundaries: a chunk takes groups while it
    stays within ``size`` rows on each side (one longer group is a chunk of its own); rows in no group (the gaps) go
    with the chunk around them, or into chunks of their own, at most ``size`` rows each. Groups must be in order and
    disjoint on both sides (``GroupRows.of_batch``)."""
    bounds: list[tuple[int, int, int, int]] = []
    if groups is not None:
        columns = (groups.student_start, groups.student_end, groups.teacher_start, groups.teacher_end)
        bounds = list(zip(*(column.tolist() for column in columns)))
    pieces: list[tuple[int, int, bool]] = []  # (student end, teacher end, whether the piece is a group)
    end_s = end_t = 0
    for index, (s0, s1, t0, t1) in enumerate(bounds + [(rows_s, rows_s, rows_t, rows_t)]):
        last_one = index == len(bounds)  # the end of the rows, after the last group
        if s0 < end_s or t0 < end_t or (not last_one and (s1 <= s0 or t1 <= t0 or s1 > rows_s or t1 > rows_t)):
            raise ValueError(
                "the chunked cross-vocabulary step needs non-empty groups within the rows, in order "
                "and disjoint on both sides"
            )
        gap = max(-(-(s0 - end_s) // size), -(-(t0 - end_t) // size))
        for piece in range(1, gap + 1):
            pieces.append((min(end_s + piece * size, s0), min(end_t + piece * size, t0), False))
        if not last_one:
            pieces.append((s1, t1, True))
        end_s, end_t = s1, t1
    chunks: list[Chunk] = []
    start_s = start_t = first_group = group = 0
    last: Optional[tuple[int, int]] = None
    for piece_s, piece_t, is_group in pieces:
        if last is not None and (piece_s - start_s > size or piece_t - start_t > size):
            chunks.append(Chunk(slice(start_s, last[0]), slice(start_t, last[1]), slice(first_group, group)))
            start_s, start_t, first_group = last[0], last[1], group
        group += is_group
        last = (piece_s, piece_t)
    if last is not None:
        chunks.append(Chunk(slice(start_s, last[0]), slice(start_t, last[1]), slice(first_group, group)))
    return chunks


@dataclass(frozen=True)
class Side:
    """One side's view of the vocabulary map: ``ids`` ``[M]`` its entry of each pair, ``pair`` ``[V]`` the pair of
    each entry (−1: none), ``alone`` ``[V − M]`` the entries in no pair, ``alone_at`` ``[V]`` each entry's position in
    ``alone`` (−1: paired)."""

    ids: Tensor
    pair: Tensor
    alone: Tensor
    alone_at: Tensor

    @classmethod
    def of(cls, ids: Tensor, vocab: int) -> "Side":
        pair = torch.full((vocab,), -1, dtype=torch.long, device=ids.device)
        pair[ids] = torch.arange(ids.numel(), device=ids.device)
        alone = (pair < 0).nonzero().squeeze(-1)
        alone_at = torch.full((vocab,), -1, dtype=torch.long, device=ids.device)
        alone_at[alone] = torch.arange(alone.numel(), device=ids.device)
        return cls(ids, pair, alone, alone_at)


@dataclass
class Buckets:
    """One side's quantities at a chunk's group starts: ``log_buckets`` ``[G, M + 2]`` (kept pairs, group, rest),
    ``unmatched`` ``[G, V − M + 2]`` the log-probabilities of the rest's entries (the unpaired entries, y_1's leftover
    log(q(y_1) − e^C), the other side's removed pair's entry), ``log_first`` log q(y_1), ``multi`` whether the group's
    later rows carry probability (C < log q(y_1)), ``other`` that last entry's id (−1: none)."""

    log_buckets: Tensor
    unmatched: Tensor
    log_first: Tensor
    multi: Tensor
    other: Tensor

    @property
    def rest(self) -> Tensor:
        return self.log_buckets[:, -1]


def side_buckets(log_probs: Tensor, first: Tensor, targets: Tensor, chain: Tensor, side: Side, own: Tensor,
                 other: Tensor, buffers: "Buffers", name: str) -> Buckets:  # fmt: skip
    """A side's ``Buckets`` from its chunk of log-probabilities ``[n, V]`` at rows ``first`` ``[G]`` (targets y_1),
    the chains ``[G]``, and the pairs of each side's y_1 (``own``: this side's, ``other``: the other's; −1: none),
    which leave the kept pairs (the module docstring of ``lit_kd.losses.cross_vocab``). Its tensors live in
    ``buffers`` under ``name`` (the first rows are gathered into ``{name}_rows``, then its columns: the pairs' and the
    unpaired entries' — no advanced-indexing copy, no fresh ``[G, V]`` block)."""
    count, vocab = first.numel(), log_probs.shape[1]
    groups = torch.arange(count, device=first.device)
    neg_inf = torch.tensor(float("-inf"), dtype=log_probs.dtype, device=log_probs.device)
    rows = buffers(name + "_rows", count, vocab)  # (gather: index_select took seconds at times on 2 busy cores)
    torch.gather(log_probs, 0, first[:, None].expand(-1, vocab), out=rows)
    log_buckets = buffers(name + "_buckets", count, side.ids.numel() + 2)
    torch.gather(rows, 1, side.ids.expand(count, -1), out=log_buckets[:, :-2])
    for pair in (own, other):
        hit = pair >= 0
        log_buckets[groups[hit], pair[hit]] = neg_inf
    log_first = rows.gather(-1, targets[:, None]).squeeze(-1)
    tail = chain - log_first  # Σ over the group's later rows of log q (0 for a one-row group)
    multi = tail < 0
    leftover = torch.where(multi, log_first + log1mexp(torch.where(multi, tail, -torch.ones_like(tail))), neg_inf)
    other_id = torch.where((other >= 0) & (other != own), side.ids[other.clamp(min=0)], -1)
    unmatched = buffers(name + "_unmatched", count, side.alone.numel() + 2)
    torch.gather(rows, 1, side.alone.expand(count, -1), out=unmatched[:, :-2])
    at = side.alone_at[targets]  # y_1's own column, when y_1 is unpaired: its mass is the leftover's
    unmatched[groups[at >= 0], at[at >= 0]] = neg_inf
    unmatched[:, -2] = leftover
    unmatched[:, -1] = torch.where(other_id >= 0, rows.gather(-1, other_id.clamp(min=0)[:, None]).squeeze(-1), neg_inf)
    log_buckets[:, -2] = chain
    top = unmatched.amax(-1, keepdim=True)  # the rest: logsumexp of the unmatched entries (−inf where none)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    exp = torch.sub(unmatched, top, out=room(rows, unmatched.shape)).exp_()  # the rows are gathered: reuse them
    log_buckets[:, -1] = exp.sum(-1).log_().add_(top.squeeze(-1))
    return Buckets(log_buckets, unmatched, log_first, multi, other_id)


def bucket_divergence(config: LossConfig, log_q: Tensor, log_p: Tensor, with_grad: bool,
                      buffers: "Buffers") -> tuple[Tensor, Tensor]:  # fmt: skip
    """(d ``[G]``, ∂d/∂log_q ``[G, M + 2]`` or an empty tensor) of the objective on bucket log-probabilities at τ = 1
    (DRKL's label: the group bucket): its fused kernel, in place (``log_q``/``log_p`` are overwritten), or autograd
    on the buckets for an objective without one (a plugin, AB at its limits)."""
    label = torch.full((log_q.shape[0],), log_q.shape[1] - 2, dtype=torch.long, device=log_q.device)
    alpha, beta = config.ab_alpha, config.ab_beta
    if config.name in KERNELS and (config.name != "ab" or (alpha != 0 and beta != 0 and alpha + beta != 0)):
        kwargs = kernel_arguments(config, log_q, log_p, label, 1.0, 1.0)
        grad = buffers("bucket_grad", *log_q.shape)
        scratch = buffers("bucket_scratch", *log_q.shape) if config.name in SCRATCH else None
        values = KERNELS[config.name](log_q, log_p, grad, scratch, 1.0, 1.0, zeros=True, **kwargs)
        return values, grad
    with torch.enable_grad():
        leaf = log_q.detach().requires_grad_(with_grad)
        values = per_token_divergence(config, leaf, log_p, label, tau=1.0)
        grad = torch.autograd.grad(values.sum(), leaf)[0] if with_grad else log_q.new_zeros(0)
    return values.detach(), grad


def largest(x: Tensor, k: int, with_index: bool) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """(the ``k`` largest entries of each row of ``[G, n]`` in ascending order, their columns (``with_index``), the
    sum of the other entries); ``x`` may be overwritten. On CPU by numpy's partition and sort (``largest_numpy``:
    SIMD selection, a fifth of ``torch.topk``'s time at 400 × 37,561, k = 4,411, on this project's 2-core
    machine), elsewhere by ``torch.topk`` (``largest_torch``)."""
    return (largest_numpy if x.device.type == "cpu" else largest_torch)(x, k, with_index)


def largest_numpy(x: Tensor, k: int, with_index: bool) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """``largest`` by numpy, on a CPU tensor (overwritten when ``with_index`` is False: partitioned in place)."""
    array, width = x.numpy(), x.shape[-1]
    if with_index and k == width:
        index = np.argsort(array, axis=-1)
        return torch.from_numpy(np.take_along_axis(array, index, -1)), torch.from_numpy(index), x.new_zeros(len(x))
    if with_index:
        order = np.argpartition(array, width - k, axis=-1)
        others = np.take_along_axis(array, order[:, : width - k], -1).sum(-1)
        top = order[:, width - k :]
        values = np.take_along_axis(array, top, -1)
        ascending = np.argsort(values, axis=-1)
        index = torch.from_numpy(np.take_along_axis(top, ascending, -1))
        return torch.from_numpy(np.take_along_axis(values, ascending, -1)), index, torch.from_numpy(others)
    if k < width:
        array.partition(width - k, axis=-1)  # in place: the k largest last, in any order
        array[:, width - k :].sort(axis=-1)
    else:
        array.sort(axis=-1)
    return x[:, width - k :], None, x[:, : width - k].sum(-1)


def largest_torch(x: Tensor, k: int, with_index: bool) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """``largest`` by ``torch.topk`` (any device)."""
    values, index = x.topk(k, dim=-1)
    others = x.scatter(-1, index, 0.0).sum(-1)
    return values.flip(-1), index.flip(-1) if with_index else None, others


def sorted_l1_and_grad(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_k |sort↓(a)_k − sort↓(b)_k| per row, the narrower side padded with zeros; its subgradient in b,
    sign(b_j − a at b_j's rank)). Only the ranks both sides fill are paired: each side's k largest (``largest``,
    k = the narrower width) in order, and the sum of the wider side's other entries, which meet the padding's
    zeros. ``a`` is overwritten."""
    k = min(a.shape[-1], b.shape[-1])
    a_sorted, _, a_rest = largest(a, k, with_index=False)
    b_sorted, b_index, b_rest = largest(b, k, with_index=True)
    grad = torch.sign(b)  # the entries beyond the k largest meet zeros
    diff = b_sorted - a_sorted
    grad.scatter_(-1, b_index, torch.sign(diff))
    return diff.abs_().sum(-1) + a_rest + b_rest, grad


class Buffers:
    """``[rows, width]`` blocks reused from chunk to chunk (grown when a chunk needs more rows)."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device, self._blocks = dtype, device, {}

    def __call__(self, name: str, rows: int, width: int) -> Tensor:
        block = self._blocks.get(name)
        if block is None or block.shape[0] < rows or block.shape[1] != width:
            block = self._blocks[name] = torch.empty(rows, width, dtype=self.dtype, device=self.device)
        return block[:rows]


def room(block: Tensor, shape: torch.Size) -> Tensor:
    """A ``shape`` view at the start of the contiguous ``block``'s memory (a buffer done with, reused as scratch), or
    a new tensor where the block is too small."""
    if block.numel() < shape[0] * shape[1]:
        return block.new_empty(shape)
    return block.view(-1)[: shape[0] * shape[1]].view(shape)


def top_flags(logits: Tensor) -> Tensor:
    """``[2]``: NaN, +inf anywhere in ``logits`` (from the rows' maxima: NaN propagates through ``amax``)."""
    top = logits.amax(-1)
    return torch.stack([top.isnan().any(), top.isposinf().any()])


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
    r = kd_ratio if kd_on else 0.0
    rows_s, vocab_s, device = student_hidden.shape[0], student_head.width, student_hidden.device
    dtype = torch.promote_types(weight.dtype, torch.float32)
    head_grad = needs_grad and weight.requires_grad  # a frozen head (adapters on the student): no [V, d] gradient
    grad_hidden = torch.zeros_like(student_hidden) if needs_grad else None
    grad_weight = torch.zeros_like(weight) if head_grad else None
    grad_bias = torch.zeros_like(bias) if head_grad and bias is not None and bias.requires_grad else None
    nonfinite = torch.zeros(4, dtype=torch.bool, device=device)
    ce_sum = torch.zeros((), dtype=dtype, device=device)
    kd_loss = torch.zeros((), dtype=dtype, device=device) if kd_on else None
    masses: list[Tensor] = []
    buffers = Buffers(dtype, device)
    if kd_on:
        assert groups is not None and vocabulary is not None and teacher_targets is not None
        assert teacher_hidden is not None and teacher_head is not None
        rows_t = teacher_hidden.shape[0]
        teacher_side = Side.of(vocabulary.teacher_ids.to(device), teacher_head.width)
        student_side = Side.of(vocabulary.student_ids.to(device), vocab_s)
        plan = chunk_plan(groups, rows_s, rows_t, chunk_size)
    else:
        plan = chunk_plan(None, rows_s, 0, chunk_size)

    for chunk in plan:
        n = chunk.student.stop - chunk.student.start
        hidden, targets = student_hidden[chunk.student], student_targets[chunk.student].long()
        with torch.no_grad():
            logits = logits_into(buffers("s", n, vocab_s), student_head, hidden)
            nonfinite[:2] |= top_flags(logits)
            log_q = None
            with_groups = kd_on and chunk.groups.stop > chunk.groups.start
            if with_groups:  # log q_τ, before the block turns into log softmax(z) for the CE
                log_q = torch.div(logits, tau, out=buffers("q", n, vocab_s))
                torch.log_softmax(log_q, -1, out=log_q)
            torch.log_softmax(logits, -1, out=logits)
            ce = -logits.gather(-1, targets[:, None]).squeeze(-1)
            ce_sum += ce.sum()
            kd_grad = None  # (∂L/∂ℓ_i, coefficient of −q_τ, first rows, u), the KD term's part of ∂L/∂z
            if with_groups:
                assert log_q is not None
                kd_grad = group_chunk(
                    config, chunk, log_q, targets, teacher_hidden, teacher_head, teacher_targets, groups,
                    teacher_side, student_side, buffers, tau, r, uld_weight, needs_grad, nonfinite, masses,
                    kd_loss,
                )  # fmt: skip
            elif kd_on and chunk.teacher.stop > chunk.teacher.start:  # rows in no group: only their flags
                teacher_logits = logits_into(buffers("t", chunk.teacher.stop - chunk.teacher.start,
                                                     teacher_head.width), teacher_head,
                                             teacher_hidden[chunk.teacher])  # fmt: skip
                nonfinite[2:] |= top_flags(teacher_logits)
            if not needs_grad:
                continue
            # ∂L/∂z = (1 − r)(softmax(z) − e_y) + (∂L/∂ℓ_i/τ)(e_y − q_τ) + the first rows' bucket terms
            grad = logits.exp_().mul_(1.0 - r) if r < 1 else logits.zero_()
            scatter = torch.full((n, 1), r - 1.0, dtype=dtype, device=device)
            if kd_grad is not None:
                assert log_q is not None
                dlogq, coef, first, u = kd_grad
                grad.addcmul_(log_q.exp_(), coef[:, None], value=-1.0)
                scatter += dlogq[:, None] / tau
                grad.index_add_(0, first, u, alpha=r / tau)
            grad.scatter_add_(-1, targets[:, None], scatter)
            accumulate_gradients(grad, hidden, student_head, (grad_hidden[chunk.student], grad_weight, grad_bias))

    total = (1.0 - r) * ce_sum + r * kd_loss if kd_on else ce_sum
    loss = total.detach()
    if needs_grad:
        loss = _PrecomputedGradient.apply(loss, student_hidden, weight, bias, grad_hidden, grad_weight, grad_bias)
    diag = None
    if diagnostics and kd_on:
        mass = torch.cat(masses) if masses else ce_sum.new_zeros(0)
        diag = {"matched_mass": mass.mean() if mass.numel() else mass.new_zeros(())}
    return TokenSums(
        loss=loss,
        lm_loss=ce_sum,
        kd_loss=kd_loss,
        tokens=int(student_targets.numel()),
        nonfinite=nonfinite,
        diagnostics=diag,
        step_tau=config.tau if kd_on else None,
    )


def group_chunk(
    config: LossConfig,
    chunk: Chunk,
    log_q: Tensor,
    targets: Tensor,
    teacher_hidden: Tensor,
    teacher_head: OutputHead,
    teacher_targets: Tensor,
    groups: GroupRows,
    teacher_side: Side,
    student_side: Side,
    buffers: Buffers,
    tau: float,
    r: float,
    uld_weight: float,
    needs_grad: bool,
    nonfinite: Tensor,
    masses: list[Tensor],
    kd_loss: Tensor,
) -> Optional[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The KD term of a chunk's groups from the student's log q_τ ``[n, V_s]`` and the teacher's logits (made here,
    once): adds Σ_g d_g to ``kd_loss`` (and the matched masses, the teacher's flags); with ``needs_grad`` returns
    ∂L/∂z's parts (the module docstring): ∂L/∂ℓ_i ``[n]`` (r·∂d/∂C of each row's group, 0 in no group), the
    coefficient of −q_τ,i ``[n]``, the first rows ``[G]`` and their u ``[G, V_s]``."""
    span = slice(chunk.groups.start, chunk.groups.stop)
    n, n_t = log_q.shape[0], chunk.teacher.stop - chunk.teacher.start
    first_s = groups.student_start[span] - chunk.student.start
    end_s = groups.student_end[span] - chunk.student.start
    first_t = groups.teacher_start[span] - chunk.teacher.start
    end_t = groups.teacher_end[span] - chunk.teacher.start
    log_p = logits_into(buffers("t", n_t, teacher_head.width), teacher_head, teacher_hidden[chunk.teacher])
    nonfinite[2:] |= top_flags(log_p)
    if tau != 1.0:
        log_p.div_(tau)
    torch.log_softmax(log_p, -1, out=log_p)
    y_t = teacher_targets[chunk.teacher].long()
    chain_t = group_chain(log_p.gather(-1, y_t[:, None]).squeeze(-1), first_t, end_t)
    realized = log_q.gather(-1, targets[:, None]).squeeze(-1)
    members_s, owner_s = member_rows(first_s, end_s)
    chain_s = realized.new_zeros(first_s.numel()).index_add_(0, owner_s, realized[members_s])
    y1_t, y1_s = y_t[first_t], targets[first_s]
    pair_t, pair_s = teacher_side.pair[y1_t], student_side.pair[y1_s]
    p = side_buckets(log_p, first_t, y1_t, chain_t, teacher_side, pair_t, pair_s, buffers, "t")
    q = side_buckets(log_q, first_s, y1_s, chain_s, student_side, pair_s, pair_t, buffers, "s")
    masses.append(1.0 - p.rest.exp())
    log_rest_s = q.rest.clone()
    values, bucket_grad = bucket_divergence(config, q.log_buckets, p.log_buckets, needs_grad, buffers)
    if config.tau_squared_scaling:
        values = values * tau**2
        bucket_grad.mul_(tau**2)
    uld_grad = None
    rows = buffers("s_rows", first_s.numel(), log_q.shape[1])  # free again (``side_buckets``)
    b = torch.exp(q.unmatched, out=room(rows, q.unmatched.shape))  # the student's unmatched probabilities
    if uld_weight:
        distance, uld_grad = sorted_l1_and_grad(p.unmatched.exp_(), b)
        values = values + uld_weight * distance
    del p
    kd_loss += values.sum()
    if not needs_grad:
        return None
    # the rest's and ULD's weight on each unmatched entry: G_rest/R + w·h_j (nothing where R = 0)
    g_rest = torch.where(log_rest_s > float("-inf"), bucket_grad[:, -1], 0.0)
    finite_rest = torch.where(log_rest_s > float("-inf"), log_rest_s, 0.0)
    per_entry = torch.sub(q.unmatched, finite_rest[:, None], out=q.unmatched).exp_().mul_(g_rest[:, None])
    if uld_grad is not None:  # G_rest·b_j/R, + w·h_j·b_j
        per_entry.addcmul_(b, uld_grad, value=uld_weight)
    # y_1's leftover b = q(y_1) − e^C: ∂b/∂log q(y_1) = q(y_1), ∂b/∂C = −e^C (multi-row groups only)
    leftover = g_rest * torch.exp(q.log_first - finite_rest)
    from_chain = g_rest * torch.exp(chain_s - finite_rest)
    if uld_grad is not None:
        leftover += uld_weight * uld_grad[:, -2] * q.log_first.exp()
        from_chain += uld_weight * uld_grad[:, -2] * chain_s.exp()
    leftover, from_chain = (torch.where(q.multi, x, 0.0) for x in (leftover, from_chain))
    d_chain = bucket_grad[:, -2] - from_chain  # ∂d/∂C
    # u = ∂d/∂log q at the first rows, over the student's vocabulary
    u = buffers("u", first_s.numel(), log_q.shape[1]).zero_()
    kept = bucket_grad[:, :-2]
    for pair in (pair_s, pair_t):  # the removed pairs' buckets are constants (−inf)
        hit = pair >= 0
        kept[hit.nonzero().squeeze(-1), pair[hit]] = 0.0
    u.index_copy_(1, student_side.ids, kept)
    u.index_copy_(1, student_side.alone, per_entry[:, :-2])
    rows = torch.arange(first_s.numel(), device=u.device)
    u.index_put_((rows, y1_s), leftover, accumulate=True)
    has_other = q.other >= 0
    u.index_put_((rows[has_other], q.other[has_other]), per_entry[has_other, -1], accumulate=True)
    dlogq = log_q.new_zeros(n).index_add_(0, members_s, r * d_chain[owner_s])
    coef = (dlogq / tau).index_add_(0, first_s, u.sum(-1), alpha=r / tau)
    return dlogq, coef, first_s, u


def member_rows(start: Tensor, end: Tensor) -> tuple[Tensor, Tensor]:
    """(every row of the groups ``[start_g, end_g)`` in order, the group each belongs to)."""
    lengths = end - start
    owner = torch.repeat_interleave(torch.arange(start.numel(), device=start.device), lengths)
    offsets = torch.repeat_interleave(start - (torch.cumsum(lengths, 0) - lengths), lengths)
    return offsets + torch.arange(owner.numel(), device=start.device), owner


def group_chain(realized: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """C_g = Σ_{r ∈ [start_g, end_g)} realized_r for every group."""
    members, owner = member_rows(start, end)
    return realized.new_zeros(start.numel()).index_add_(0, owner, realized[members])
