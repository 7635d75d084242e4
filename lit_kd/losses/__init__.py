"""τ-scaled distillation objectives: pure functions ``[N, V] × [N, V] → [N]`` and their registry."""

from lit_kd.losses.ab import ab
from lit_kd.losses.akl import akl, akl_head_weight, akl_weights
from lit_kd.losses.core import check_tau, kl_from_log_probs, log1mexp, log_softmax_at, masked_mean, safe_logaddexp
from lit_kd.losses.diagnostics import kd_diagnostics
from lit_kd.losses.drkl import drkl, drkl_terms
from lit_kd.losses.kl import fkl, rkl, sym_kl
from lit_kd.losses.mixtures import js, sfkl, srkl
from lit_kd.losses.registry import (
    OBJECTIVES,
    HParam,
    LossConfig,
    Objective,
    distillation_loss,
    get_objective,
    per_token_divergence,
    register,
)
from lit_kd.losses.tvd import tvd

__all__ = [
    "ab",
    "akl",
    "akl_head_weight",
    "akl_weights",
    "drkl",
    "drkl_terms",
    "js",
    "kd_diagnostics",
    "log1mexp",
    "safe_logaddexp",
    "sfkl",
    "srkl",
    "sym_kl",
    "tvd",
    "OBJECTIVES",
    "HParam",
    "LossConfig",
    "Objective",
    "check_tau",
    "distillation_loss",
    "fkl",
    "get_objective",
    "kl_from_log_probs",
    "log_softmax_at",
    "masked_mean",
    "per_token_divergence",
    "register",
    "rkl",
]
