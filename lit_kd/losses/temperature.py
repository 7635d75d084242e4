"""τ as a knob that moves: schedules over training and per-token rules.

**Schedules** set one τ per optimizer step from the step count alone (so a resumed run gets exactly the τ of an
uninterrupted one). With start τ₀ = ``model.loss.tau``, end τ₁ = ``tau_end`` and progress r = min(s / H, 1) after
s optimizer steps of a horizon of H steps (``tau_horizon``, in steps or epochs):

    constant   τ(s) = τ₀
    linear     τ(s) = τ₀ + (τ₁ − τ₀)·r
    cosine     τ(s) = τ₁ + (τ₀ − τ₁)·½(1 + cos(π r))        (τ₀ > τ₁ anneals, the direction of Annealing-KD)
    step       τ(s) = τ₀ while s < H, then τ₁

**Rules** give each response token i its own temperatures (τ_s,i for the student, τ_t,i for the teacher), from
its logits and the step's τ; every objective takes them as ``[N]`` tensors (``lit_kd.losses.core.softened``).
Each τ is clamped to [``tau_min``, ``tau_max``], is never NaN and never ≤ 0 (constant rows, one-hot teachers and
all-equal logits included). Statistics run over each row's finite entries (−inf marks a masked entry).

    logit_standardization   τ_t,i = τ·σ(z_t,i), τ_s,i = τ·σ(z_s,i), σ the (unbiased) standard deviation of a
                            row's logits: softmax(z/τ_i) = softmax(((z − z̄)/σ)/τ), the Z-score pre-process of
                            Sun et al., "Logit Standardization in Knowledge Distillation" (CVPR 2024, §3: "the
                            temperature as the weighted standard deviation of logit"). The student's σ carries
                            its gradient, as in the authors' code (their ``normalize``); the teacher's is constant.
    sharpness_matching      τ_s,i = 2x_s/(x_s + x_t)·τ, τ_t,i = 2x_t/(x_s + x_t)·τ, x = max_k z_k − z̄ a row's
                            sharpness, so z_s/τ_s and z_t/τ_t have the same sharpness (x_s + x_t)/(2τ) and the two
                            temperatures average to τ. DTKD-style (Wei & Bai, "Dynamic Temperature Knowledge
                            Distillation", arXiv 2404.12711) — the paper's text is not readable here; the form is
                            the one its public code computes from the max logit (logsumexp ≈ max), here centred by
                            the row mean because an LLM's logits have an arbitrary offset (a negative max would
                            give a negative τ). Both temperatures are detached (constants of the step). Its KD
                            term is minimized by every positive multiple of the teacher's logits, so it needs the
                            LM loss beside it (``kd_ratio`` < 1) to set the student's sharpness (``fit`` warns).
    entropy_target          τ_t,i = τ_s,i = the τ at which the teacher's entropy H(softmax(z_t,i/τ)) equals
                            ``tau_target_entropy`` (nats): H rises monotonically with τ, so a safeguarded Newton
                            iteration in log τ (dH/d log τ = Var_p(log p)) with bisection inside [tau_min, tau_max]
                            solves every row at once; rows that cannot reach the target (a one-hot or constant
                            teacher) end at a bound. Entropy-targeted, in the spirit of EGAD (arXiv 2605.01732, τ
                            from the teacher's token entropy) — that paper's text is not readable here either, so
                            this is the rule as described above, not a reproduction. Detached.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from lit_kd.losses.core import Temperature, upcast

SCHEDULES = ("constant", "linear", "cosine", "step")
HORIZON_UNITS = ("steps", "epochs")
RULES = ("none", "logit_standardization", "sharpness_matching", "entropy_target")


def scheduled_tau(schedule: str, start: float, end: Optional[float], progress: float) -> float:
    """τ at ``progress`` ∈ [0, 1] of the horizon (see the module docstring)."""
    if schedule == "constant" or end is None:
        return start
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return start if progress < 1.0 else end
    raise ValueError(f"unknown tau schedule {schedule!r}")


def _row_statistics(logits: Tensor, spread: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, unbiased standard deviation, max) of each row's finite entries, ``[N]`` each (σ only with
    ``spread``, else zeros); a row with fewer than two finite entries has σ = 0. The square root's gradient is zero
    (not NaN) where σ = 0. A masked −inf never wins the max, so the max needs no mask."""
    finite = torch.isfinite(logits)
    count = finite.sum(-1).to(logits.dtype)
    kept = logits.masked_fill(~finite, 0.0)
    mean = kept.sum(-1) / count.clamp(min=1)
    top = logits.amax(-1)
    if not spread:
        return mean, torch.zeros_like(mean), torch.where(count > 0, top, mean)
    # Σ(z − z̄)² = Σz² − n·z̄² over the finite entries
    variance = ((kept * kept).sum(-1) - count * mean * mean).clamp(min=0) / (count - 1).clamp(min=1)
    positive = variance > 0
    std = torch.where(positive, torch.sqrt(torch.where(positive, variance, torch.ones_like(variance))), 0.0)
    return mean, std, torch.where(count > 0, top, mean)


def logit_standardization(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(τ_s, τ_t) = (τ·σ(z_s), τ·σ(z_t)) per row; the student's σ keeps its gradient."""
    _, std_s, _ = _row_statistics(upcast(student_logits))
    _, std_t, _ = _row_statistics(upcast(teacher_logits).detach())
    return tau * std_s, tau * std_t


def sharpness_matching(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(τ_s, τ_t) = (2x_s, 2x_t)/(x_s + x_t)·τ per row, x = max − mean; τ for both where x_s + x_t = 0. Detached."""
    with torch.no_grad():
        mean_s, _, max_s = _row_statistics(upcast(student_logits), spread=False)
        mean_t, _, max_t = _row_statistics(upcast(teacher_logits), spread=False)
        x_s, x_t = max_s - mean_s, max_t - mean_t
        total = x_s + x_t
        usable = total > 0
        safe = torch.where(usable, total, torch.ones_like(total))
        tau_s = torch.where(usable, 2.0 * x_s / safe * tau, torch.full_like(total, tau))
        tau_t = torch.where(usable, 2.0 * x_t / safe * tau, torch.full_like(total, tau))
    return tau_s, tau_t


def entropy_at(log_p: Tensor) -> tuple[Tensor, Tensor]:
    """(H(p), Var_p(log p)) per row from log-probabilities (−inf entries have no mass)."""
    p = log_p.exp()
    kept = p > 0
    log_kept = torch.where(kept, log_p, torch.zeros_like(log_p))
    entropy = -(p * log_kept).sum(-1)
    second = (p * log_kept**2).sum(-1)
    return entropy, (second - entropy**2).clamp(min=0)


def entropy_target_tau(
    teacher_logits: Tensor,
    target: float,
    tau: float,
    tau_min: float,
    tau_max: float,
    max_steps: int = 40,
    tolerance: float = 1e-5,
) -> Tensor:
    """The τ_i ∈ [tau_min, tau_max] at which H(softmax(z_t,i/τ_i)) = ``target`` nats, per row (detached). H rises
    with τ, so rows whose entropy at a bound is already past the target take that bound (two passes); the others
    run a safeguarded Newton iteration in u = log τ (dH/du = Var_p(log p)) inside a bisection bracket, from
    u = log τ, each pass over the rows not yet within ``tolerance`` only."""
    with torch.no_grad():
        logits = upcast(teacher_logits)
        rows = logits.shape[0]
        tiny = torch.finfo(logits.dtype).tiny

        def entropy_and_slope(values: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
            return entropy_at(torch.log_softmax(values / u.exp().unsqueeze(-1), dim=-1))

        low_u = torch.full((rows,), math.log(tau_min), dtype=logits.dtype, device=logits.device)
        high_u = torch.full_like(low_u, math.log(tau_max))
        at_low, _ = entropy_and_slope(logits, low_u)
        at_high, _ = entropy_and_slope(logits, high_u)
        start = torch.full_like(low_u, math.log(min(max(tau, tau_min), tau_max)))
        u = torch.where(at_high <= target, high_u, torch.where(at_low >= target, low_u, start))
        active = torch.nonzero((at_low < target) & (at_high > target)).squeeze(-1)
        current, low, high = u[active], low_u[active], high_u[active]
        for _ in range(max_steps):
            if active.numel() == 0:
                break
            entropy, slope = entropy_and_slope(logits.index_select(0, active), current)
            gap = entropy - target
            done = gap.abs() <= tolerance
            high = torch.where(gap > 0, current, high)
            low = torch.where(gap < 0, current, low)
            newton = current - gap / slope.clamp(min=tiny)
            inside = (slope > tiny) & (newton > low) & (newton < high)
            current = torch.where(done, current, torch.where(inside, newton, 0.5 * (low + high)))
            u = u.index_copy(0, active, current)
            going = ~done
            active, current, low, high = active[going], current[going], low[going], high[going]
        return u.exp().clamp(tau_min, tau_max)


def rule_temperatures(
    rule: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: float,
    tau_min: float,
    tau_max: float,
    target_entropy: float,
) -> tuple[Tensor, Tensor]:
    """(τ_s, τ_t), ``[N]`` each, of ``rule`` on rows ``[N, V]`` at the step's τ, clamped to [tau_min, tau_max]; a
    rule with one τ for both returns the same tensor twice."""
    if rule == "logit_standardization":
        tau_s, tau_t = logit_standardization(student_logits, teacher_logits, tau)
    elif rule == "sharpness_matching":
        tau_s, tau_t = sharpness_matching(student_logits, teacher_logits, tau)
    elif rule == "entropy_target":  # one τ per token for both, within the bounds already
        tau_t = entropy_target_tau(teacher_logits, target_entropy, tau, tau_min, tau_max)
        return tau_t, tau_t
    else:
        raise ValueError(f"unknown tau rule {rule!r}; choose one of {', '.join(RULES)}")
    return tau_s.clamp(tau_min, tau_max), tau_t.clamp(tau_min, tau_max)


def describe(tau: Temperature, prefix: str = "tau") -> dict[str, Tensor | float]:
    """``{"<prefix>_mean", "<prefix>_p10", "<prefix>_p90"}`` of a per-row τ (tensors on its device: logging them
    needs no host sync); ``{}`` for a number or no rows."""
    if not isinstance(tau, Tensor) or tau.numel() == 0:
        return {}
    values = tau.detach().float().flatten()
    quantiles = torch.quantile(values, torch.tensor([0.1, 0.9], device=values.device))
    return {f"{prefix}_mean": values.mean(), f"{prefix}_p10": quantiles[0], f"{prefix}_p90": quantiles[1]}
