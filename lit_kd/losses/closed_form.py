"""Objectives with their gradient in closed form: the value and ∂d/∂z_s of a chunk in one pass, no autograd graph.

Every objective here is a function f(q) of the student's q = softmax(z_s/τ_s) (p = softmax(z_t/τ_t) fixed), so its
gradient is the softmax pull-back (``../shared/reference/objectives.md`` §1)

    ∂d/∂z_s,j = (1/τ_s)·(u_j − q_j·Σ_k u_k),    u_k = q_k·∂f/∂q_k,

and each objective gives u (zero where q_k = 0, so −inf-masked entries stay out):

    fkl     u = −p                                   rkl     u = q·log(q/p)
    sym_kl  u = w·(−p) + (1 − w)·q·log(q/p)          js      u = (1 − β)·q·log(q/M),  M = βp + (1 − β)q
    tvd     u = ½·q·sign(q − p)                      sfkl    u = −(1 − α)·q·p/m,      m = αp + (1 − α)q
    srkl    u = q·(log(q/m') − α·q/m'),  m' = (1 − α)p + αq

(the equations of objectives.md §2.1–2.7; mixtures are not detached, as in the objectives themselves). The values
are the objectives' own formulas on the same log-probabilities. AKL, AB and DRKL, and the logit-standardization
rule (whose student τ carries a gradient), have none here: the chunked path differentiates them with autograd.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from lit_kd.losses.core import Temperature, kl_from_log_probs, softened
from lit_kd.losses.mixtures import _log_mixture
from lit_kd.losses.registry import KDTerm, LossConfig, squared_factor, term_temperatures

ValueAndDual = Callable[..., tuple[Tensor, Tensor]]


def _where_q(q: Tensor, values: Tensor) -> Tensor:
    """``values`` where q > 0, else 0 (a masked or underflown entry contributes nothing)."""
    return torch.where(q > 0, values, torch.zeros_like(values))


def _log_ratio(log_a: Tensor, log_b: Tensor, a: Tensor) -> Tensor:
    return _where_q(a, log_a - log_b)


def fkl(log_p: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor]:
    return kl_from_log_probs(log_p, log_q), -log_p.exp()


def rkl(log_p: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor]:
    q = log_q.exp()
    return kl_from_log_probs(log_q, log_p), q * _log_ratio(log_q, log_p, q)


def sym_kl(log_p: Tensor, log_q: Tensor, weight: float = 0.5) -> tuple[Tensor, Tensor]:
    (forward, u_forward), (reverse, u_reverse) = fkl(log_p, log_q), rkl(log_p, log_q)
    return weight * forward + (1.0 - weight) * reverse, weight * u_forward + (1.0 - weight) * u_reverse


def js(log_p: Tensor, log_q: Tensor, beta: float = 0.1) -> tuple[Tensor, Tensor]:
    log_m, q = _log_mixture(log_p, log_q, beta), log_q.exp()
    value = beta * kl_from_log_probs(log_p, log_m) + (1.0 - beta) * kl_from_log_probs(log_q, log_m)
    return value, (1.0 - beta) * q * _log_ratio(log_q, log_m, q)


def tvd(log_p: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor]:
    p, q = log_p.exp(), log_q.exp()
    return 0.5 * (p - q).abs().sum(-1), 0.5 * q * torch.sign(q - p)


def sfkl(log_p: Tensor, log_q: Tensor, alpha: float = 0.1) -> tuple[Tensor, Tensor]:
    log_m, q = _log_mixture(log_p, log_q, alpha), log_q.exp()
    ratio = _where_q(q, (log_p - log_m).exp())  # p/m (m ≥ (1 − α)q > 0 where q > 0)
    return kl_from_log_probs(log_p, log_m), -(1.0 - alpha) * q * ratio


def srkl(log_p: Tensor, log_q: Tensor, alpha: float = 0.1) -> tuple[Tensor, Tensor]:
    log_m, q = _log_mixture(log_q, log_p, alpha), log_q.exp()
    h = _log_ratio(log_q, log_m, q) - alpha * _where_q(q, (log_q - log_m).exp())
    return kl_from_log_probs(log_q, log_m), q * h


CLOSED_FORMS: dict[str, ValueAndDual] = {
    "fkl": fkl, "rkl": rkl, "sym_kl": sym_kl, "js": js, "tvd": tvd, "sfkl": sfkl, "srkl": srkl,
}  # fmt: skip
"""Registry name → (log p, log q, hyperparameters) ↦ (value ``[n]``, u ``[n, V]``)."""


def has_closed_form(config: LossConfig) -> bool:
    """Whether ``kd_term_and_gradient`` serves this config (its objective is here; no rule whose student τ carries a
    gradient)."""
    return config.name in CLOSED_FORMS and config.tau_rule != "logit_standardization"


def kd_term_and_gradient(
    config: LossConfig, student_logits: Tensor, teacher_logits: Tensor
) -> Optional[tuple[KDTerm, Tensor]]:
    """The KD term of rows ``[n, V]`` as ``kd_term`` gives it (s·d and its temperatures) and ∂(s·d)/∂z_s ``[n, V]``,
    without an autograd graph; None where there is no closed form (``has_closed_form``)."""
    if not has_closed_form(config):
        return None
    with torch.no_grad():
        tau_s, tau_t = term_temperatures(config, student_logits, teacher_logits)
        log_p, log_q = softened(student_logits, teacher_logits, tau_s, tau_t)
        values, u = CLOSED_FORMS[config.name](log_p, log_q, **config.hparam_values())
        q = log_q.exp()
        gradient = (u - q * u.sum(-1, keepdim=True)) / _column(tau_s, log_q)
        if config.tau_squared_scaling:
            scale = squared_factor(tau_s, tau_t, values.dtype)
            values = values * scale
            gradient = gradient * _column(scale, log_q)
    return KDTerm(values, tau_s, tau_t), gradient


def _column(tau: Temperature, like: Tensor) -> Tensor | float:
    """A per-row τ as a ``[n, 1]`` column in ``like``'s dtype (a number as it is)."""
    return tau.to(like.dtype).unsqueeze(-1) if isinstance(tau, Tensor) else tau
