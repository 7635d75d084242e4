"""The registry of τ-scaled objectives and the config that selects one from YAML.

Adding an objective = one pure function + one ``register(Objective(...))`` call that declares its
hyperparameters (``HParam``: field, keyword argument, default, range, doc) + its tests. Everything else
follows from the registry: ``LossConfig``'s fields, their range checks and ``--help`` texts, the
``python -m lit_kd objectives`` table; ``DistillModule`` never changes. An objective registered later (a
plugin module imported before the CLI runs) is usable the same way. ``LossConfig`` is what LightningCLI
builds from ``model.loss``::

    model:
      loss:
        name: js
        tau: 2.0
        js_beta: 0.5
"""

from __future__ import annotations

import inspect
import keyword
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from lit_kd.errors import ConfigError
from lit_kd.losses.ab import ab
from lit_kd.losses.akl import akl
from lit_kd.losses.core import Temperature, check_tau, masked_mean
from lit_kd.losses.drkl import drkl
from lit_kd.losses.kl import fkl, rkl, sym_kl
from lit_kd.losses.mixtures import js, sfkl, srkl
from lit_kd.losses.temperature import HORIZON_UNITS, RULES, SCHEDULES, rule_temperatures, scheduled_tau
from lit_kd.losses.tvd import tvd


@dataclass(frozen=True)
class HParam:
    """One hyperparameter of an objective, declared once: the ``LossConfig`` field that holds it
    (``model.loss.<field>``), the keyword argument of the objective's function it feeds, its default, a
    one-line doc, and its valid range (``low``/``high``, each end closed unless ``open_*``; the default
    range is any finite value)."""

    field: str
    kwarg: str
    default: float
    doc: str
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    @property
    def interval(self) -> str:
        """The valid range as errors write it: ``[0.0, 1.0]``, ``(0.0, inf]``, ..."""
        return f"{'(' if self.open_low else '['}{float(self.low)}, {float(self.high)}{')' if self.open_high else ']'}"

    @property
    def range_text(self) -> str:
        """The valid range as help and tables write it: ``[0.0, 1.0]``, ..., ``(-inf, inf)`` for any finite value."""
        return "(-inf, inf)" if self.low == -math.inf and self.high == math.inf else self.interval

    def check(self, value: Any) -> None:
        """Raise a ``ConfigError`` naming ``model.loss.<field>`` unless ``value`` is a finite number in range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"model.loss.{self.field} must be a finite number, got {value!r}")
        low, high = self.low, self.high
        if value < low or value > high or (self.open_low and value == low) or (self.open_high and value == high):
            raise ConfigError(f"model.loss.{self.field} must be in {self.interval}, got {value}")


@dataclass(frozen=True)
class Objective:
    """A registry entry: the per-token function, its formula, and the hyperparameters ``LossConfig`` feeds it."""

    name: str
    fn: Callable[..., Tensor]
    formula: str
    hparams: Sequence[HParam] = ()
    """each hyperparameter of ``fn``, declared once (stored as a tuple)"""
    needs_targets: bool = False
    """whether ``fn`` takes the label token of each row as ``targets``"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hparams", tuple(self.hparams))


OBJECTIVES: dict[str, Objective] = {}

# LossConfig's own fields, before the hyperparameters: (name, type, default, doc; {names} = the registered objectives)
COMMON_FIELDS: tuple[tuple[str, type, Any, str], ...] = (
    ("name", str, "fkl", "Objective name in the registry: {names} (listed by `python -m lit_kd objectives`)."),
    ("tau", float, 1.0, "Distillation temperature τ > 0; teacher and student logits are both divided by it."),
    (
        "tau_squared_scaling",
        bool,
        False,
        "Multiply the KD term by τ² (Hinton et al. 2015; τ_s·τ_t per token under a tau_rule). Off by default, as "
        "in DistiLLM/MiniLLM.",
    ),
    ("tau_schedule", str, "constant", "τ over training: constant, linear, cosine or step, from tau to tau_end."),
    ("tau_end", Optional[float], None, "τ at the end of the schedule's horizon (linear, cosine, step)."),
    ("tau_horizon", Optional[int], None, "Length of the schedule (in tau_horizon_unit); τ stays tau_end after it."),
    ("tau_horizon_unit", str, "steps", "Unit of tau_horizon: steps (optimizer steps) or epochs."),
    (
        "tau_rule",
        str,
        "none",
        "Per-token temperatures: none, logit_standardization, sharpness_matching or entropy_target "
        "(lit_kd.losses.temperature).",
    ),
    ("tau_min", float, 0.05, "Lower bound of a rule's per-token τ."),
    ("tau_max", float, 100.0, "Upper bound of a rule's per-token τ."),
    ("tau_target_entropy", float, 1.0, "entropy_target: the teacher's entropy (nats) each token's τ is solved for."),
)


def registered_hparams() -> dict[str, HParam]:
    """Every registered objective's hyperparameters by field, in registration order (a shared field once)."""
    hparams: dict[str, HParam] = {}
    for objective in OBJECTIVES.values():
        for hparam in objective.hparams:
            hparams.setdefault(hparam.field, hparam)
    return hparams


def get_objective(name: str) -> Objective:
    """Look an objective up by name; an unknown name is an error that lists the valid ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        valid = ", ".join(sorted(OBJECTIVES))
        raise ConfigError(f"unknown distillation loss {name!r}; valid names: {valid}") from None


class LossConfig:
    """The distillation objective, its temperature τ and its hyperparameters (all checked on creation).

    A dataclass whose fields (and this docstring's ``Args:``, which ``--help`` shows) are made from the
    registry by ``register``: ``name``, ``tau``, ``tau_squared_scaling``, then each registered
    hyperparameter, e.g. ``js_beta``.
    """

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
        check_temperature_options(self)
        for hparam in registered_hparams().values():
            hparam.check(getattr(self, hparam.field))

    @property
    def objective(self) -> Objective:
        return get_objective(self.name)

    @property
    def moves_tau(self) -> bool:
        """Whether τ changes during training (a schedule) or per token (a rule)."""
        return self.tau_schedule != "constant" or self.tau_rule != "none"

    def tau_at(self, step: int, steps_per_epoch: Optional[int] = None) -> float:
        """The schedule's τ after ``step`` optimizer steps (``steps_per_epoch`` converts a horizon in epochs)."""
        if self.tau_schedule == "constant":
            return self.tau
        horizon = self.tau_horizon
        if self.tau_horizon_unit == "epochs":
            if steps_per_epoch is None:
                raise ConfigError("model.loss.tau_horizon_unit: epochs needs the number of optimizer steps per epoch")
            horizon *= max(steps_per_epoch, 1)
        return scheduled_tau(self.tau_schedule, self.tau, self.tau_end, step / horizon)

    def at_step(self, step: int, steps_per_epoch: Optional[int] = None) -> "LossConfig":
        """This config with ``tau`` set to the schedule's τ after ``step`` optimizer steps (itself when constant)."""
        if self.tau_schedule == "constant":
            return self
        return replace(self, tau=self.tau_at(step, steps_per_epoch))

    def objective_hparams(self) -> dict[str, Any]:
        """The selected objective's hyperparameters as ``{field: value}``, e.g. ``{"js_beta": 0.1}``."""
        return {hparam.field: getattr(self, hparam.field) for hparam in self.objective.hparams}

    def hparam_values(self) -> dict[str, float]:
        """The keyword arguments this config passes to its objective's function, e.g. ``{"beta": 0.1}``."""
        return {hparam.kwarg: getattr(self, hparam.field) for hparam in self.objective.hparams}


_LOSS_CONFIG_SUMMARY = inspect.cleandoc(LossConfig.__doc__ or "")


def _loss_config_doc() -> str:
    """``LossConfig``'s docstring with an ``Args:`` line per field: jsonargparse's help text for each option."""
    names = ", ".join(OBJECTIVES)
    lines = [_LOSS_CONFIG_SUMMARY, "", "Args:"]
    lines += [f"    {name}: {doc.format(names=names)}" for name, _, _, doc in COMMON_FIELDS]
    for field, hparam in registered_hparams().items():
        users = "/".join(o.name for o in OBJECTIVES.values() if any(h.field == field for h in o.hparams))
        lines.append(f"    {field}: {users}: {hparam.doc} Range: {hparam.range_text}.")
    return "\n".join(lines) + "\n"


def _build_loss_config() -> None:
    """(Re)make ``LossConfig`` a dataclass of ``COMMON_FIELDS`` then every registered hyperparameter (a float
    with its default), with the ``Args:`` docstring. In place, not a new class: ``DistillModule``'s annotation,
    which LightningCLI reads, and every import of ``LossConfig`` keep pointing at the one class."""
    made_by_dataclass = ("__init__", "__repr__", "__eq__", "__hash__", "__match_args__", "__dataclass_fields__")
    for attr in (*made_by_dataclass, "__dataclass_params__"):
        if attr in vars(LossConfig):
            delattr(LossConfig, attr)
    annotations: dict[str, type] = {}
    for name, kind, default, _ in COMMON_FIELDS:
        annotations[name] = kind
        setattr(LossConfig, name, default)
    for field, hparam in registered_hparams().items():
        annotations[field] = float
        setattr(LossConfig, field, hparam.default)
    LossConfig.__annotations__ = annotations
    LossConfig.__doc__ = _loss_config_doc()
    dataclass(LossConfig)


def _check_declaration(objective: Objective) -> None:
    """Refuse an entry that ``LossConfig`` could not hold or that contradicts the registry (a ``ValueError``)."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    parameters = inspect.signature(objective.fn).parameters
    known = registered_hparams()
    fields, kwargs = [h.field for h in objective.hparams], [h.kwarg for h in objective.hparams]
    if len(set(fields)) < len(fields) or len(set(kwargs)) < len(kwargs):
        raise ValueError(f"objective {objective.name!r} declares a hyperparameter field or keyword twice")
    for hparam in objective.hparams:
        where = f"objective {objective.name!r}, hyperparameter {hparam.field!r}"
        identifier = hparam.field.isidentifier() and not keyword.iskeyword(hparam.field)
        common = hparam.field in (name for name, _, _, _ in COMMON_FIELDS)
        own_attribute = hparam.field not in known and hasattr(LossConfig, hparam.field)  # e.g. a method
        if not identifier or common or own_attribute:
            raise ValueError(f"{where}: not usable as a LossConfig field name")
        if hparam.kwarg not in parameters:
            raise ValueError(f"{where}: {objective.fn.__name__}() has no parameter {hparam.kwarg!r}")
        fn_default = parameters[hparam.kwarg].default
        if fn_default is not inspect.Parameter.empty and fn_default != hparam.default:
            raise ValueError(f"{where}: default {hparam.default} differs from {objective.fn.__name__}()'s {fn_default}")
        try:
            hparam.check(hparam.default)
        except ConfigError as err:
            raise ValueError(f"{where}: the default is out of range ({err})") from None
        if hparam.field in known and replace(known[hparam.field], kwarg=hparam.kwarg) != hparam:
            raise ValueError(f"{where}: declared differently by another objective: {known[hparam.field]}")


def register(objective: Objective) -> Objective:
    """Add an objective to the registry; its hyperparameters become ``LossConfig`` fields (``model.loss.<field>``)."""
    _check_declaration(objective)
    OBJECTIVES[objective.name] = objective
    _build_loss_config()
    return objective


SKEW_ALPHA = HParam(
    "skew_alpha", "alpha", 0.1, "skew α (SFKL mixes α·p, SRKL mixes α·q); 0.1 as in DistiLLM.", low=0.0, high=1.0
)
"""sfkl and srkl share it (both read ``model.loss.skew_alpha``)."""

register(Objective("fkl", fkl, "KL(p‖q) = Σ p (log p − log q)"))
register(Objective("rkl", rkl, "KL(q‖p) = Σ q (log q − log p)"))
register(
    Objective(
        "sym_kl",
        sym_kl,
        "w·FKL + (1 − w)·RKL",
        [
            HParam(
                "sym_kl_weight",
                "weight",
                0.5,
                "weight w of FKL (1 − w on RKL); 0.5 as in [T] App. A.",
                low=0.0,
                high=1.0,
            )
        ],
    )
)
register(
    Objective(
        "js",
        js,
        "β·KL(p‖M) + (1 − β)·KL(q‖M), M = βp + (1 − β)q",
        [
            HParam(
                "js_beta",
                "beta",
                0.1,
                "mixture weight β of the teacher in M = βp + (1 − β)q; 0.1 is DistiLLM's convention.",
                low=0.0,
                high=1.0,
                open_low=True,
                open_high=True,
            )
        ],
    )
)
register(Objective("tvd", tvd, "½ Σ |p − q|"))
register(Objective("sfkl", sfkl, "KL(p ‖ αp + (1 − α)q)", [SKEW_ALPHA]))
register(Objective("srkl", srkl, "KL(q ‖ (1 − α)p + αq)", [SKEW_ALPHA]))
register(
    Objective(
        "akl",
        akl,
        "w_head·FKL + w_tail·RKL, weights from p's head/tail gaps at mass μ",
        [HParam("akl_mu", "mu", 0.5, "cumulative teacher mass μ that bounds the head.", low=0.0, high=1.0)],
    )
)
register(
    Objective(
        "ab",
        ab,
        "−1/(αβ) Σ [p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β)]",
        [
            HParam("ab_alpha", "alpha", 0.2, "α of the AB-divergence (limits handled)."),
            HParam("ab_beta", "beta", 0.7, "β of the AB-divergence (limits handled)."),
        ],
    )
)
register(
    Objective(
        "drkl",
        drkl,
        "KL(b_q‖b_p) + γ·KL(q̂‖p̂), t = label token",
        [
            HParam(
                "drkl_gamma",
                "gamma",
                0.5,
                "weight γ of the non-target KL. PROVISIONAL default (docs/concepts/objectives.md).",
                low=0.0,
                open_low=True,
            )
        ],
        needs_targets=True,
    )
)


def check_temperature_options(config: LossConfig) -> None:
    """One ``ConfigError`` naming the ``model.loss`` key of a τ schedule or rule that cannot run."""
    if config.tau_schedule not in SCHEDULES:
        raise ConfigError(f"model.loss.tau_schedule: unknown {config.tau_schedule!r}; choose {', '.join(SCHEDULES)}")
    if config.tau_horizon_unit not in HORIZON_UNITS:
        raise ConfigError(
            f"model.loss.tau_horizon_unit: unknown {config.tau_horizon_unit!r}; choose {', '.join(HORIZON_UNITS)}"
        )
    if config.tau_schedule == "constant":
        if config.tau_end is not None or config.tau_horizon is not None:
            raise ConfigError(
                "model.loss.tau_end / tau_horizon are set but tau_schedule is constant; set tau_schedule "
                f"({', '.join(SCHEDULES[1:])}) or remove them"
            )
    else:
        if config.tau_end is None or config.tau_horizon is None:
            raise ConfigError(f"model.loss.tau_schedule {config.tau_schedule} needs tau_end and tau_horizon")
        try:
            config.tau_end = check_tau(config.tau_end)
        except ConfigError as err:
            raise ConfigError(f"model.loss.tau_end: {err}") from None
        if isinstance(config.tau_horizon, bool) or not isinstance(config.tau_horizon, int) or config.tau_horizon < 1:
            raise ConfigError(f"model.loss.tau_horizon must be a whole number >= 1, got {config.tau_horizon!r}")
    if config.tau_rule not in RULES:
        raise ConfigError(f"model.loss.tau_rule: unknown {config.tau_rule!r}; choose {', '.join(RULES)}")
    for key in ("tau_min", "tau_max", "tau_target_entropy"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"model.loss.{key} must be a finite number > 0, got {value!r}")
    if config.tau_min >= config.tau_max:
        raise ConfigError(f"model.loss.tau_min ({config.tau_min}) must be below tau_max ({config.tau_max})")
    if config.tau_rule != "none" and "teacher_tau" not in inspect.signature(config.objective.fn).parameters:
        raise ConfigError(
            f"model.loss.tau_rule {config.tau_rule} gives the teacher and the student their own per-token τ, which "
            f"objective {config.name!r} cannot take ({config.objective.fn.__name__}() has no teacher_tau parameter)"
        )


def per_token_divergence(
    config: LossConfig,
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Optional[Tensor] = None,
    tau: Optional[Temperature] = None,
    teacher_tau: Optional[Temperature] = None,
) -> Tensor:
    """The selected objective on flattened ``[N, V]`` logits → ``[N]`` (no τ² factor, no reduction), at
    ``config.tau`` or the given (per-row) student and teacher temperatures."""
    objective = config.objective
    kwargs = config.hparam_values()
    if objective.needs_targets:
        if targets is None:
            raise ValueError(f"objective {objective.name!r} needs the label token of each row (targets)")
        kwargs["targets"] = targets
    if teacher_tau is not None:
        kwargs["teacher_tau"] = teacher_tau
    return objective.fn(student_logits, teacher_logits, config.tau if tau is None else tau, **kwargs)


@dataclass
class KDTerm:
    """The KD term of each row, ``values`` = s·d_i (s = τ² or τ_s·τ_t with ``tau_squared_scaling``, else 1), and
    the temperatures it was computed at (numbers, or ``[N]`` tensors under a rule)."""

    values: Tensor
    tau: Temperature
    teacher_tau: Temperature


def kd_term(
    config: LossConfig, student_logits: Tensor, teacher_logits: Tensor, targets: Optional[Tensor] = None
) -> KDTerm:
    """The configured objective on ``[N, V]`` rows at ``config.tau``, or at the per-token temperatures of its
    ``tau_rule`` (``lit_kd.losses.temperature``); without a rule it is the plain call, bit for bit."""
    tau_s, tau_t = term_temperatures(config, student_logits, teacher_logits)
    if config.tau_rule == "none":  # the objective's plain call (a plugin may not take teacher_tau)
        values = per_token_divergence(config, student_logits, teacher_logits, targets)
    else:
        values = per_token_divergence(config, student_logits, teacher_logits, targets, tau_s, tau_t)
    if config.tau_squared_scaling:
        values = values * squared_factor(tau_s, tau_t, values.dtype)
    return KDTerm(values, tau_s, tau_t)


def term_temperatures(
    config: LossConfig, student_logits: Tensor, teacher_logits: Tensor
) -> tuple[Temperature, Temperature]:
    """(τ_s, τ_t) of the KD term on rows ``[N, V]``: ``config.tau`` for both without a rule, else the rule's
    per-row temperatures (``lit_kd.losses.temperature.rule_temperatures``)."""
    if config.tau_rule == "none":
        return config.tau, config.tau
    return rule_temperatures(config.tau_rule, student_logits, teacher_logits, config.tau, config.tau_min,
                             config.tau_max, config.tau_target_entropy)  # fmt: skip


def squared_factor(tau_s: Temperature, tau_t: Temperature, dtype: torch.dtype) -> Temperature:
    """s of ``tau_squared_scaling``'s s·d: τ² for one number, τ_s,i·τ_t,i per row (detached, in ``dtype``)."""
    if isinstance(tau_s, Tensor) or isinstance(tau_t, Tensor):
        return (tau_s * tau_t).detach().to(dtype)  # type: ignore[union-attr]
    return tau_s**2 if tau_s == tau_t else tau_s * tau_t


def distillation_loss(
    config: LossConfig,
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Optional[Tensor] = None,
    targets: Optional[Tensor] = None,
) -> Tensor:
    """L_KD = Σ_i m_i s_i d_i / Σ_i m_i, d_i the per-token divergence (``kd_term``: s_i = τ² or τ_s,i·τ_t,i with
    ``tau_squared_scaling``, else 1).

    ``mask=None`` means every row counts (the rows were already gathered at response positions).
    """
    values = kd_term(config, student_logits, teacher_logits, targets).values
    return masked_mean(values, torch.ones_like(values, dtype=torch.bool) if mask is None else mask)
