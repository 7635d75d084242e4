"""Shared numerics of the τ-scaled objectives: temperature softening, safe KL terms, the masked mean.

Conventions (``../shared/reference/objectives.md`` §1, Luong & Chen 2026 Eq. 1):
    p = softmax(z_t / τ_t)  (teacher),   q = softmax(z_s / τ_s)  (student),
with τ_t = τ_s = τ unless a temperature rule (``lit_kd.losses.temperature``) sets them apart. A temperature is
a number (every row) or a ``[N]`` tensor (one per row). Every objective maps flattened logits ``[N, V]`` to
per-token values ``[N]``. All math runs in float32 (bf16/fp16 inputs are upcast) and in log space.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Union

import torch
from torch import Tensor

from lit_kd.errors import ConfigError

Temperature = Union[float, Tensor]
"""τ for every row (a number) or per row (a ``[N]`` tensor, > 0)."""


def check_tau(tau: float) -> float:
    """Return τ as a float, or raise if it is not a finite number > 0."""
    if isinstance(tau, bool) or not isinstance(tau, Real):
        raise ConfigError(f"temperature tau must be a number, got {tau!r} ({type(tau).__name__})")
    tau = float(tau)
    if not math.isfinite(tau) or tau <= 0:
        raise ConfigError(f"temperature tau must be finite and > 0, got {tau}")
    return tau


def check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    """Both logit tensors must be ``[N, V]`` with the same shape."""
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(
            "objectives take flattened logits [N, V]; got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape: compare over the shared vocabulary"
        )


def upcast(logits: Tensor) -> Tensor:
    """Half-precision logits are upcast to float32; float32/float64 are kept (float64 serves gradcheck)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def log_softmax_at(logits: Tensor, tau: Temperature) -> Tensor:
    """log softmax(z / τ) over the last dim, in float32 (or float64 for float64 input); a ``[N]`` τ divides row i
    of ``[N, V]`` logits by τ_i."""
    logits = upcast(logits)
    if isinstance(tau, Tensor):
        tau = tau.to(logits.dtype).unsqueeze(-1)
        if tau.requires_grad:  # −inf / τ has the τ-gradient +inf · 0 = NaN: divide the finite entries only
            masked = torch.isneginf(logits)
            scaled = logits.masked_fill(masked, 0.0) / tau
            return torch.log_softmax(scaled.masked_fill(masked, float("-inf")), dim=-1)
    return torch.log_softmax(logits / tau, dim=-1)


def softened(
    student_logits: Tensor, teacher_logits: Tensor, tau: Temperature, teacher_tau: Optional[Temperature] = None
) -> tuple[Tensor, Tensor]:
    """(log p, log q) = (log softmax(z_t/τ_t), log softmax(z_s/τ_s)) of checked ``[N, V]`` logits; τ_s = ``tau``,
    τ_t = ``teacher_tau`` (default: ``tau``, the same temperature for both)."""
    check_logits(student_logits, teacher_logits)
    return log_softmax_at(teacher_logits, tau if teacher_tau is None else teacher_tau), log_softmax_at(
        student_logits, tau
    )


def detached(tau: Temperature) -> Temperature:
    """A per-row τ without its autograd graph (a number as it is)."""
    return tau.detach() if isinstance(tau, Tensor) else tau


def entropy(log_p: Tensor) -> Tensor:
    """H(p) = −Σ_k p_k log p_k over the last dim, from log-probabilities; 0·log 0 := 0 (a −inf entry has no mass)."""
    p = log_p.exp()
    return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(-1)


def safe_logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b) with a finite gradient where both are −inf (torch's own gives NaN there).

    Used to form mixtures in log space: log(w·x + (1−w)·y) = logaddexp(log w + log x, log(1−w) + log y).
    """
    both = torch.isneginf(a) & torch.isneginf(b)
    out = torch.logaddexp(torch.where(both, torch.zeros_like(a), a), torch.where(both, torch.zeros_like(b), b))
    return torch.where(both, torch.full_like(out, float("-inf")), out)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x ≤ 0, stable at both ends (Mächler 2012): log(−expm1(x)) near 0, log1p(−e^x) below −log 2."""
    near = x > -math.log(2.0)
    # each branch gets an input it is safe at (both are evaluated, and a NaN gradient of the unused one would leak)
    small = torch.log(-torch.expm1(torch.where(near, x, -1.0)))
    large = torch.log1p(-torch.exp(torch.where(near, -1.0, x)))
    return torch.where(near, small, large)


def kl_from_log_probs(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a‖b) = Σ_k a_k (log a_k − log b_k) over the last dim, from log-probabilities.

    0·log 0 := 0: where a_k = 0 the log-ratio is replaced by 0 *before* the product, so an entry
    masked with −inf in both distributions contributes neither a NaN value nor a NaN gradient.
    A positive a_k against b_k = 0 gives +inf, as the math says.
    """
    a = log_a.exp()
    log_ratio = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * log_ratio).sum(dim=-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Σ_i m_i v_i / Σ_i m_i: one token-level mean over the whole micro-batch (objectives.md §1).

    ``values`` and ``mask`` have the same shape; an empty mask is an error, never a silent 0 or NaN.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.bool()
    count = mask.sum()
    if count == 0:
        raise ValueError("masked_mean: the mask selects no position (no response token in this batch)")
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count
