"""The KD step's loss over the response rows of a micro-batch, as token *sums* (normalized later over the whole
optimizer step), computed either from full logits or chunk by chunk from hidden states and LM heads.

Per response token i (label t_i, student logits z_s,i, teacher logits z_t,i):

    ℓ_i = (1 − r) · CE(z_s,i, t_i) + r · s · d(z_s,i, z_t,i; τ)        r = kd_ratio, s = τ² or 1

with d the configured objective from the registry, called as it is (``per_token_divergence``).

**Chunked, fused-head path** (``chunked_token_sums``): the rows are taken ``chunk_size`` at a time (``"auto"``:
``auto_chunk_size``, from V and the hidden size); for each chunk the student's logits ``h_s W_sᵀ`` and the teacher's
``h_t W_tᵀ`` (live hidden states or cached ones) are written into the buffers of one ``Workspace``, reused from chunk
to chunk, and the objective's fused kernel (``lit_kd.losses.fused``: every built-in objective, in closed form, in
place, no autograd graph; optionally through ``torch.compile``) turns them into ℓ and ∂ℓ/∂z_s, which then flows
into the hidden rows and the head by two matmuls written in place. The logit-standardization rule and AB's limit
cases take ``torch.autograd.grad`` on the chunk instead. At most a few ``[chunk, V]`` blocks exist at a time and
the full ``[B, T, V]`` logits never do. The gradients are kept (``[N, d]`` for the hidden rows, ``[V, d]`` for the
head) and handed to autograd by ``_PrecomputedGradient``, whose backward scales them by the incoming gradient: the
loss is linear in Σ ℓ (it is divided by the step's token count), so nothing is recomputed — the chunked step costs
the same FLOPs as the full-logits one (the approach of Liger's fused linear cross-entropy).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_kd.losses.core import Temperature, detached, upcast
from lit_kd.losses.diagnostics import kd_diagnostics
from lit_kd.losses.fused import (
    SCRATCH,
    Workspace,
    as_step_inputs,
    chunk_step,
    compile_failed,
    compiled_step,
    has_kernel,
    kernel_arguments,
)
from lit_kd.losses.registry import KDTerm, LossConfig, kd_term, term_temperatures
from lit_kd.losses.temperature import describe
from lit_kd.models.head import OutputHead

SUM_NAMES = ("loss", "kd_loss", "lm_loss")
NONFINITE_KINDS = ("NaN in student logits", "+inf in student logits", "NaN in teacher logits", "+inf in teacher logits")
"""What ``TokenSums.nonfinite`` flags, in order (−inf is a legitimate mask)."""


@dataclass
class TokenSums:
    """Sums over the response tokens of one micro-batch: ``loss`` carries the gradient, the others are detached."""

    loss: Tensor
    lm_loss: Tensor
    kd_loss: Optional[Tensor]
    tokens: int
    nonfinite: Tensor = field(default_factory=lambda: torch.zeros(len(NONFINITE_KINDS), dtype=torch.bool))
    """flags of the non-finite values met (``NONFINITE_KINDS``), kept on the device: reading them is a host sync"""
    diagnostics: Optional[dict[str, Tensor]] = None
    """KD diagnostics as means over this micro-batch's tokens (when asked for)"""
    step_tau: Optional[float] = None
    """the step's τ (the schedule's; a rule's base), when the KD term was computed"""
    tau: Optional[Tensor] = None
    teacher_tau: Optional[Tensor] = None
    """the per-token student and teacher temperatures ``[tokens]`` of a ``tau_rule`` (detached; None without one;
    ``tau`` is None too under a rule that gives the student the teacher's τ)"""

    def step_logs(self) -> dict[str, Tensor | float]:
        """What the training step logs: ``diag/*`` (when asked for) and ``train/tau*`` (``temperatures``)."""
        logs = {f"diag/{name}": value for name, value in (self.diagnostics or {}).items()}
        return logs | {f"train/{name}": value for name, value in self.temperatures().items()}

    def temperatures(self) -> dict[str, Tensor | float]:
        """``tau`` (the step's), and under a rule ``tau_mean/p10/p90`` of the teacher's per-token τ and
        ``tau_student_*`` of the student's when the rule gives it its own; empty without a KD term."""
        if self.step_tau is None:
            return {}
        described: dict[str, Tensor | float] = {"tau": self.step_tau}
        if self.teacher_tau is None:
            return described
        described.update(describe(self.teacher_tau))
        if self.tau is not None:
            described.update(describe(self.tau, prefix="tau_student"))
        return described

    @property
    def problems(self) -> list[str]:
        """The non-finite values met: "NaN in student logits", "+inf in teacher logits", ... (a host sync)."""
        return [kind for kind, found in zip(NONFINITE_KINDS, self.nonfinite.tolist()) if found]

    def mean(self, name: str) -> Optional[Tensor]:
        """``Σ / tokens`` of ``loss``, ``kd_loss`` or ``lm_loss`` (None where that term is absent)."""
        value = getattr(self, name)
        return None if value is None else value / max(self.tokens, 1)


def token_terms(
    student_logits: Tensor,
    teacher_logits: Optional[Tensor],
    targets: Tensor,
    config: LossConfig,
    kd_ratio: float,
) -> tuple[Tensor, Tensor, Optional[KDTerm]]:
    """Per-token ``(ℓ, CE, KD term)`` of rows ``[n, V]``; the KD term (s·d and its temperatures, ``kd_term``) is None
    without teacher logits or weight. With ``kd_ratio`` 1 the CE is only logged: computed without an autograd graph,
    so its ``[n, V]`` log-probabilities are not kept for a backward that never uses them."""
    logged_only = teacher_logits is not None and kd_ratio == 1
    with torch.no_grad() if logged_only else nullcontext():
        ce = F.cross_entropy(upcast(student_logits), targets, reduction="none")
    if teacher_logits is None or kd_ratio == 0:
        return ce, ce, None
    term = kd_term(config, student_logits, teacher_logits, targets)
    kd = term.values
    combined = kd if kd_ratio == 1 else (1.0 - kd_ratio) * ce + kd_ratio * kd
    return combined, ce, term


def nonfinite_flags(student_logits: Tensor, teacher_logits: Optional[Tensor]) -> Tensor:
    """``[4]`` bool on the logits' device: NaN / +inf in the student's, then in the teacher's logits (no host sync)."""
    flags = [torch.isnan(student_logits).any(), torch.isposinf(student_logits).any()]
    if teacher_logits is not None:
        flags += [torch.isnan(teacher_logits).any(), torch.isposinf(teacher_logits).any()]
    else:
        flags += [torch.zeros((), dtype=torch.bool, device=student_logits.device)] * 2
    return torch.stack(flags)


def token_sums_from_logits(
    student_logits: Tensor,
    teacher_logits: Optional[Tensor],
    targets: Tensor,
    config: LossConfig,
    kd_ratio: float,
    diagnostics: bool = False,
) -> TokenSums:
    """The full-logits path: rows ``[N, V]`` of both models at once (``model.chunk_size: null``)."""
    combined, ce, kd = token_terms(student_logits, teacher_logits, targets, config, kd_ratio)
    diag = None
    if diagnostics and kd is not None:
        diag = kd_diagnostics(config, student_logits, teacher_logits, targets)
    return TokenSums(
        loss=combined.sum(),
        lm_loss=ce.detach().sum(),
        kd_loss=None if kd is None else kd.values.detach().sum(),
        tokens=int(targets.numel()),
        nonfinite=nonfinite_flags(student_logits.detach(), teacher_logits),
        diagnostics=diag,
        step_tau=None if kd is None else config.tau,
        **rule_temperatures_of([kd] if kd is not None else []),
    )


def rule_temperatures_of(terms: list[KDTerm]) -> dict[str, Optional[Tensor]]:
    """``tau`` and ``teacher_tau`` of ``TokenSums``: the rule's per-token temperatures of the chunks, concatenated
    (``tau`` None when the rule gives the student the teacher's own τ tensor: no comparison, no host sync)."""
    if not terms or not isinstance(terms[0].teacher_tau, Tensor):
        return {}
    terms = [detached_term(term) for term in terms]
    shared = all(term.tau is term.teacher_tau for term in terms)
    return {
        "tau": None if shared else torch.cat([term.tau for term in terms]),  # type: ignore[misc]
        "teacher_tau": torch.cat([term.teacher_tau for term in terms]),  # type: ignore[misc]
    }


def detached_term(term: KDTerm) -> KDTerm:
    """``term`` without autograd graphs (a shared student/teacher τ stays one tensor)."""
    tau = detached(term.tau)
    return KDTerm(term.values.detach(), tau, tau if term.teacher_tau is term.tau else detached(term.teacher_tau))


class _PrecomputedGradient(torch.autograd.Function):
    """Returns ``value``; its backward hands out gradients computed in the forward, scaled by ``grad_output`` in
    place (no second ``[V, d]`` copy; a second backward through the same graph is refused by autograd's check of the
    saved tensors' versions). A frozen head (``None`` gradients) gets none."""

    @staticmethod
    def forward(ctx, value, hidden, weight, bias, grad_hidden, grad_weight, grad_bias):  # type: ignore[override]
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grads = [g.mul_(grad_output.to(g.dtype)) if g is not None else None for g in ctx.saved_tensors]
        return (None, *grads, None, None, None)


def _autograd_chunk(
    hidden: Tensor,
    student_head: OutputHead,
    targets: Tensor,
    teacher_logits: Optional[Tensor],
    config: LossConfig,
    kd_ratio: float,
    needs_grad: bool,
    grads: tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]],
    start: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[KDTerm]]:
    """One chunk by autograd (objectives without a closed form): its loss terms, with the gradients of its hidden
    rows and of the head accumulated into ``grads`` = (hidden, weight, bias; ``None`` for a frozen head)."""
    grad_hidden, grad_weight, grad_bias = grads
    with torch.enable_grad() if needs_grad else torch.no_grad():
        hidden = hidden.detach().requires_grad_(needs_grad)
        bias = student_head.bias
        leaf_weight = student_head.weight.detach().requires_grad_(grad_weight is not None)
        leaf_bias = bias.detach().requires_grad_(grad_bias is not None) if bias is not None else None
        logits = OutputHead(leaf_weight, leaf_bias, student_head.vocab_size).logits(hidden)
        combined, ce, kd = token_terms(logits, teacher_logits, targets, config, kd_ratio)
        chunk_total = combined.sum()
        if needs_grad:
            leaves = [(leaf, grad) for leaf, grad in ((leaf_weight, grad_weight), (leaf_bias, grad_bias))
                      if grad is not None]  # fmt: skip
            computed = torch.autograd.grad(chunk_total, [hidden] + [leaf for leaf, _ in leaves])
            grad_hidden[start : start + hidden.shape[0]] = computed[0]
            for (_, grad), value in zip(leaves, computed[1:]):
                grad += value
    return chunk_total, logits, combined, ce, kd


AUTO_BLOCK_ELEMENTS = 2**26
"""``chunk_size: auto`` keeps one ``[chunk, V]`` block at most this many elements (256 MiB in float32)."""


def auto_chunk_size(vocab: int, hidden_size: int) -> int:
    """Rows per chunk when ``chunk_size`` is ``auto``: the largest power of two ≤ min(d, 2²⁶/V), and at least 64.

    One ``[chunk, V]`` block is then no larger than the student's head ``[V, d]`` — whose gradient the step holds
    anyway, so the workspace (at most five blocks, ``lit_kd.losses.fused``) grows with the model, not with the
    batch — nor than 256 MiB. E.g. 512 rows for GPT-2 (d 768, V 50,257), 1,024 for OPT-1.3B (d 2,048, V 50,272),
    256 for d 768 at V 151,936."""
    return max(64, 2 ** int(math.log2(max(1.0, min(hidden_size, AUTO_BLOCK_ELEMENTS / vocab)))))


def rows_per_chunk(chunk_size: int | str, head: OutputHead) -> int:
    """``chunk_size`` itself, or ``auto_chunk_size`` of the head's vocabulary and hidden size for ``"auto"``."""
    if chunk_size == "auto":
        return auto_chunk_size(head.width, head.hidden_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows or 'auto', got {chunk_size!r}")
    return chunk_size


def chunked_token_sums(
    student_hidden: Tensor,
    student_head: OutputHead,
    targets: Tensor,
    config: LossConfig,
    kd_ratio: float,
    chunk_size: int | str,
    teacher_hidden: Optional[Tensor] = None,
    teacher_head: Optional[OutputHead] = None,
    diagnostics: bool = False,
    compiled: bool = False,
) -> TokenSums:
    """The chunked, fused-head path (see the module docstring): the same sums as ``token_sums_from_logits`` on
    ``student_head.logits(student_hidden)`` and ``teacher_head.logits(teacher_hidden)``, with the same
    gradient, one ``chunk_size``-row block of logits at a time (``"auto"``: ``auto_chunk_size``); ``compiled`` runs
    the fused kernels through ``torch.compile`` (``lit_kd.losses.fused``)."""
    chunk_size = rows_per_chunk(chunk_size, student_head)
    rows = student_hidden.shape[0]
    weight, bias = student_head.weight, student_head.bias
    needs_grad = torch.is_grad_enabled() and (student_hidden.requires_grad or weight.requires_grad)
    head_grad = needs_grad and weight.requires_grad  # a frozen head (adapters on the student): no [V, d] gradient
    with_teacher = teacher_hidden is not None and teacher_head is not None and kd_ratio > 0
    vocab = student_head.width
    if with_teacher and teacher_head.width != vocab:  # type: ignore[arg-type]
        raise ValueError(f"student logits [{rows}, {vocab}] and teacher logits [{rows}, {teacher_head.width}] "
                         "differ in shape: compare over the shared vocabulary")  # fmt: skip
    zero = torch.zeros((), device=student_hidden.device, dtype=torch.promote_types(student_hidden.dtype, torch.float32))
    total, lm_sum = zero.clone(), zero.clone()
    kd_sum = zero.clone() if with_teacher else None
    grad_hidden = torch.zeros_like(student_hidden) if needs_grad else None
    grad_weight = torch.zeros_like(weight) if head_grad else None
    grad_bias = torch.zeros_like(bias) if head_grad and bias is not None and bias.requires_grad else None
    nonfinite = torch.zeros(len(NONFINITE_KINDS), dtype=torch.bool, device=student_hidden.device)
    diag_sums: dict[str, Tensor] = {}
    terms: list[KDTerm] = []

    fused = needs_grad and (not with_teacher or has_kernel(config))
    dtype = torch.promote_types(weight.dtype, torch.float32)
    workspace = Workspace(min(chunk_size, rows), vocab, dtype, student_hidden.device)
    for start in range(0, rows, chunk_size):
        end = min(start + chunk_size, rows)
        hidden, chunk_targets = student_hidden[start:end], targets[start:end]
        with torch.no_grad():
            if fused:
                fill = partial(fill_logits, workspace, student_head, hidden, teacher_head if with_teacher else None,
                               teacher_hidden[start:end] if with_teacher else None)  # type: ignore[index]  # fmt: skip
                logits, teacher_logits = fill()
                if diagnostics and with_teacher:  # before the kernel overwrites the logits
                    add_diagnostics(diag_sums, config, logits, teacher_logits, chunk_targets)
                combined, ce, kd, flags = fused_chunk(config, workspace, logits, teacher_logits, fill, chunk_targets,
                                                     kd_ratio, compiled)  # fmt: skip
                nonfinite |= flags
                grads = (grad_hidden[start:end], grad_weight, grad_bias)  # type: ignore[index]
                accumulate_gradients(workspace("g", end - start), hidden, student_head, grads)  # type: ignore[arg-type]
                chunk_total = combined.sum()
            else:
                teacher_logits = teacher_head.logits(teacher_hidden[start:end]) if with_teacher else None
        if not fused:
            chunk_total, logits, combined, ce, kd = _autograd_chunk(
                hidden, student_head, chunk_targets, teacher_logits, config, kd_ratio,
                needs_grad, (grad_hidden, grad_weight, grad_bias), start)  # fmt: skip
            nonfinite |= nonfinite_flags(logits.detach(), teacher_logits)
            if diagnostics and kd is not None:
                add_diagnostics(diag_sums, config, logits.detach(), teacher_logits, chunk_targets)
        total += chunk_total.detach()
        lm_sum += ce.detach().sum()
        if kd is not None:
            kd_sum += kd.values.detach().sum()
            terms.append(detached_term(kd))  # not the chunk's graph: its logits are freed below
        del logits, teacher_logits, combined, ce, kd  # one chunk of logits alive at a time

    loss = total
    if needs_grad:
        loss = _PrecomputedGradient.apply(total, student_hidden, weight, bias, grad_hidden, grad_weight, grad_bias)
    return TokenSums(
        loss=loss,
        lm_loss=lm_sum,
        kd_loss=kd_sum,
        tokens=rows,
        nonfinite=nonfinite,
        diagnostics={k: v / rows for k, v in diag_sums.items()} if diag_sums else None,
        step_tau=config.tau if with_teacher else None,
        **rule_temperatures_of(terms),
    )


def add_diagnostics(sums: dict[str, Tensor], config: LossConfig, logits: Tensor, teacher_logits: Tensor,
                    targets: Tensor) -> None:  # fmt: skip
    """Add a chunk's KD diagnostics, weighted by its rows, to ``sums``."""
    for name, value in kd_diagnostics(config, logits, teacher_logits, targets).items():
        sums[name] = sums.get(name, 0.0) + value * targets.shape[0]


def fill_logits(
    workspace: Workspace,
    head: OutputHead,
    hidden: Tensor,
    teacher_head: Optional[OutputHead],
    teacher_hidden: Optional[Tensor],
) -> tuple[Tensor, Optional[Tensor]]:
    """The chunk's student logits into the workspace's ``s`` and, with a teacher, its logits into ``t``."""
    logits = logits_into(workspace("s", hidden.shape[0]), head, hidden)
    if teacher_head is None or teacher_hidden is None:
        return logits, None
    return logits, logits_into(workspace("t", hidden.shape[0]), teacher_head, teacher_hidden)


def logits_into(out: Tensor, head: OutputHead, hidden: Tensor) -> Tensor:
    """``out ← head.logits(hidden)``, written into the buffer (a matmul with ``out=`` where the dtypes allow)."""
    weight = head.weight[: out.shape[1]]
    if weight.dtype != out.dtype:
        return out.copy_(head.logits(hidden))
    if head.bias is None:
        return torch.mm(hidden.to(out.dtype), weight.T, out=out)
    return torch.addmm(head.bias[: out.shape[1]], hidden.to(out.dtype), weight.T, out=out)


def accumulate_gradients(
    grad_logits: Tensor, hidden: Tensor, head: OutputHead, grads: tuple[Tensor, Optional[Tensor], Optional[Tensor]]
) -> None:
    """Pass ∂ℓ/∂z ``[n, V]`` through z = h Wᵀ + b: ``grads`` = (the chunk's hidden rows ← ∂ℓ/∂z·W, the head's
    weight += (∂ℓ/∂z)ᵀ·h, its bias += Σ_rows ∂ℓ/∂z), in place; a frozen head's (``None``) takes no matmul."""
    grad_hidden, grad_weight, grad_bias = grads
    vocab = grad_logits.shape[1]
    weight = head.weight[:vocab]
    if weight.dtype == grad_logits.dtype == grad_hidden.dtype:
        torch.mm(grad_logits, weight, out=grad_hidden)
        if grad_weight is not None:
            grad_weight[:vocab].addmm_(grad_logits.T, hidden.to(weight.dtype))
    else:
        cast = grad_logits.to(weight.dtype)
        grad_hidden.copy_(cast @ weight)
        if grad_weight is not None:
            grad_weight[:vocab] += cast.T @ hidden.to(weight.dtype)
    if grad_bias is not None:
        grad_bias[:vocab] += grad_logits.sum(0).to(grad_bias.dtype)


def fused_chunk(
    config: LossConfig,
    workspace: Workspace,
    logits: Tensor,
    teacher_logits: Optional[Tensor],
    fill: Callable[[], object],
    targets: Tensor,
    kd_ratio: float,
    compiled: bool,
) -> tuple[Tensor, Tensor, Optional[KDTerm], Tensor]:
    """One chunk by its fused kernel (``lit_kd.losses.fused.chunk_step``) on the logits in the workspace's ``s`` and
    ``t`` (written by ``fill``): (ℓ, CE, KD term, non-finite flags), ∂ℓ/∂z_s left in its ``g``. A compiled step that
    fails is reported once, and the chunk is recomputed eagerly from fresh logits (``fill`` again)."""
    n = targets.shape[0]
    arguments: dict = {}
    tau_s: Temperature = 1.0
    tau_t: Temperature = 1.0
    if teacher_logits is not None:
        tau_s, tau_t = term_temperatures(config, logits, teacher_logits)
        arguments = kernel_arguments(config, logits, teacher_logits, targets, tau_s, tau_t)
    scratch = workspace("x", n) if teacher_logits is not None and config.name in SCRATCH else None
    ce_grad = workspace("c", n) if teacher_logits is not None and kd_ratio < 1 else None

    def run(step: Callable) -> tuple:
        inputs = as_step_inputs(tau_s, tau_t, config.tau_squared_scaling, logits, step is not chunk_step)
        return step(logits, teacher_logits, workspace("g", n), scratch, ce_grad, targets, *inputs, arguments,
                    config.name, kd_ratio)  # fmt: skip

    step = compiled_step(config.name) if compiled else None
    try:
        combined, ce, values, flags = run(step or chunk_step)
    except Exception as error:  # noqa: BLE001 — a compiler failure; the eager kernel then raises any real error
        if step is None:
            raise
        compile_failed(config.name, error)
        fill()
        combined, ce, values, flags = run(chunk_step)
    kd = None if values is None else KDTerm(values, tau_s, tau_t)
    return combined, ce, kd, flags
