"""The registry of τ-scaled objectives and the config that selects one from YAML.

Adding an objective = one pure function + one ``register(Objective(...))`` line + its tests;
``DistillModule`` never changes. ``LossConfig`` is what LightningCLI builds from ``model.loss``::

    model:
      loss:
        name: rkl
        tau: 2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from lit_kd.errors import ConfigError
from lit_kd.losses.ab import ab
from lit_kd.losses.akl import akl
from lit_kd.losses.core import check_tau, masked_mean
from lit_kd.losses.drkl import drkl
from lit_kd.losses.kl import fkl, rkl, sym_kl
from lit_kd.losses.mixtures import js, sfkl, srkl
from lit_kd.losses.tvd import tvd


@dataclass(frozen=True)
class Objective:
    """A registry entry: the per-token function and how ``LossConfig`` feeds it."""

    name: str
    fn: Callable[..., Tensor]
    formula: str
    hparams: Mapping[str, str] = field(default_factory=dict)
    """keyword argument of ``fn`` → the ``LossConfig`` field that supplies it"""
    needs_targets: bool = False
    """whether ``fn`` takes the label token of each row as ``targets``"""


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """Look an objective up by name; an unknown name is an error that lists the valid ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        valid = ", ".join(sorted(OBJECTIVES))
        raise ConfigError(f"unknown distillation loss {name!r}; valid names: {valid}") from None


register(Objective("fkl", fkl, "KL(p‖q) = Σ p (log p − log q)"))
register(Objective("rkl", rkl, "KL(q‖p) = Σ q (log q − log p)"))
register(Objective("sym_kl", sym_kl, "w·FKL + (1 − w)·RKL", {"weight": "sym_kl_weight"}))
register(Objective("js", js, "β·KL(p‖M) + (1 − β)·KL(q‖M), M = βp + (1 − β)q", {"beta": "js_beta"}))
register(Objective("tvd", tvd, "½ Σ |p − q|"))
register(Objective("sfkl", sfkl, "KL(p ‖ αp + (1 − α)q)", {"alpha": "skew_alpha"}))
register(Objective("srkl", srkl, "KL(q ‖ (1 − α)p + αq)", {"alpha": "skew_alpha"}))
register(Objective("akl", akl, "w_head·FKL + w_tail·RKL, weights from p's head/tail gaps at mass μ", {"mu": "akl_mu"}))
register(
    Objective(
        "ab", ab, "−1/(αβ) Σ [p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β)]", {"alpha": "ab_alpha", "beta": "ab_beta"}
    )
)
register(
    Objective("drkl", drkl, "KL(b_q‖b_p) + γ·KL(q̂‖p̂), t = label token", {"gamma": "drkl_gamma"}, needs_targets=True)
)


def _check_range(name: str, value: float, low: float, high: float, open_low: bool = False, open_high: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"model.loss.{name} must be a finite number, got {value!r}")
    if value < low or value > high or (open_low and value == low) or (open_high and value == high):
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ConfigError(f"model.loss.{name} must be in {interval}, got {value}")


@dataclass
class LossConfig:
    """The distillation objective, its temperature τ and its hyperparameters (all checked on creation)."""

    name: str = "fkl"
    """Objective name in the registry (see README): fkl, rkl, ..."""
    tau: float = 1.0
    """Distillation temperature τ > 0; teacher and student logits are both divided by it."""
    tau_squared_scaling: bool = False
    """Multiply the KD term by τ² (Hinton et al. 2015). Off by default, as in DistiLLM/MiniLLM."""
    sym_kl_weight: float = 0.5
    """sym_kl: weight w of FKL (1 − w on RKL), in [0, 1]; 0.5 as in [T] App. A."""
    js_beta: float = 0.1
    """js: mixture weight β of the teacher in M = βp + (1 − β)q, in (0, 1); 0.1 is DistiLLM's convention."""
    skew_alpha: float = 0.1
    """sfkl/srkl: skew α in [0, 1] (SFKL mixes α·p, SRKL mixes α·q); 0.1 as in DistiLLM."""
    akl_mu: float = 0.5
    """akl: cumulative teacher mass μ in [0, 1] that bounds the head."""
    ab_alpha: float = 0.2
    """ab: α of the AB-divergence (any finite value; limits handled)."""
    ab_beta: float = 0.7
    """ab: β of the AB-divergence (any finite value; limits handled)."""
    drkl_gamma: float = 0.5
    """drkl: weight γ > 0 of the non-target KL. PROVISIONAL default (see README)."""

    def __post_init__(self) -> None:
        try:
            get_objective(self.name)
        except ConfigError as err:
            raise ConfigError(f"model.loss.name: {err}") from None
        try:
            self.tau = check_tau(self.tau)
        except ConfigError as err:
            raise ConfigError(f"model.loss.tau: {err}") from None
        if not isinstance(self.tau_squared_scaling, bool):
            raise ConfigError(f"model.loss.tau_squared_scaling must be true or false, got {self.tau_squared_scaling!r}")
        _check_range("sym_kl_weight", self.sym_kl_weight, 0.0, 1.0)
        _check_range("js_beta", self.js_beta, 0.0, 1.0, open_low=True, open_high=True)
        _check_range("skew_alpha", self.skew_alpha, 0.0, 1.0)
        _check_range("akl_mu", self.akl_mu, 0.0, 1.0)
        _check_range("ab_alpha", self.ab_alpha, -math.inf, math.inf)
        _check_range("ab_beta", self.ab_beta, -math.inf, math.inf)
        _check_range("drkl_gamma", self.drkl_gamma, 0.0, math.inf, open_low=True)

    @property
    def objective(self) -> Objective:
        return get_objective(self.name)

    def hparam_values(self) -> dict[str, float]:
        """The keyword arguments this config passes to its objective's function."""
        return {kw: getattr(self, attr) for kw, attr in self.objective.hparams.items()}


def per_token_divergence(
    config: LossConfig, student_logits: Tensor, teacher_logits: Tensor, targets: Optional[Tensor] = None
) -> Tensor:
    """The selected objective on flattened ``[N, V]`` logits → ``[N]`` (no τ² factor, no reduction)."""
    objective = config.objective
    kwargs = config.hparam_values()
    if objective.needs_targets:
        if targets is None:
            raise ValueError(f"objective {objective.name!r} needs the label token of each row (targets)")
        kwargs["targets"] = targets
    return objective.fn(student_logits, teacher_logits, config.tau, **kwargs)


def distillation_loss(
    config: LossConfig,
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
) -> Tensor:
    """L_KD = Σ_i m_i d_i / Σ_i m_i (× τ² if ``tau_squared_scaling``), d_i the per-token divergence.

    ``mask=None`` means every row counts (the rows were already gathered at response positions).
    """
    values = per_token_divergence(config, student_logits, teacher_logits, targets)
    loss = masked_mean(values, torch.ones_like(values, dtype=torch.bool) if mask is None else mask)
    if config.tau_squared_scaling:
        loss = loss * config.tau**2
    return loss
