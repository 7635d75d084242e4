"""Checks of a built run that need no model weights, made before any model loads or anything is written: what a
run would otherwise find only after training has started.

* **Monitored metrics**: a checkpoint or an early stop (any callback with a ``monitor``) that watches a metric this
  configuration never logs — ROUGE-L with ``model.val_rouge: null``, a typo, a metric of another regime — would stop
  the run at its first validation (Lightning's ``MisconfigurationException``); it is refused now, with the metrics
  the run does log. ``logged_metrics`` is that list, kept equal to what a run logs by a test over the regimes.
* **The optimizer and LR-scheduler factories**: built once on a one-element probe parameter, so their own checks
  (a negative learning rate, betas outside [0, 1), ...) speak now, named by their option, instead of in
  ``configure_optimizers`` after the models have loaded.
* **A student whose sharpness nothing sets** (``warn_unanchored_student_scale``): sharpness matching on the KD term
  alone; one warning, the run goes on.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_kd.errors import ConfigError
from lit_kd.losses.diagnostics import DIAGNOSTICS
from lit_kd.modules import DistillModule

SEPARATE_STUDENT_TAU = ("logit_standardization", "sharpness_matching")
"""The per-token τ rules that give the student a τ of its own (logged as ``train/tau_student_*``)."""


def logged_metrics(module: DistillModule, learning_rate_name: Optional[str] = None) -> tuple[set[str], set[str]]:
    """(what each validation logs, what the training steps log) under this module's configuration;
    ``learning_rate_name``: the LR monitor's metric (``lr-AdamW``), when it runs."""
    distills = module.kd_ratio > 0 and module.teacher_config is not None
    validation = {"val/loss", "val/lm_loss"} | ({"val/kd_loss"} if distills else set())
    validation |= {"val/rougeL"} if module.val_rouge is not None else set()
    steps = {"train/loss", "train/lm_loss"}
    if distills:
        steps |= {"train/kd_loss", "train/tau"}
        rule = module.loss_config.tau_rule
        if rule != "none":
            steps |= {f"train/tau_{stat}" for stat in ("mean", "p10", "p90")}
        if rule in SEPARATE_STUDENT_TAU:
            steps |= {f"train/tau_student_{stat}" for stat in ("mean", "p10", "p90")}
        if module.diagnostics:
            steps |= {f"diag/{name}" for name in DIAGNOSTICS}
    if module.policy is not None:
        steps |= {"train/student_fraction", "train/sampled_rows"}
    if learning_rate_name is not None:
        steps.add(learning_rate_name)
    return validation, steps


def warn_unanchored_student_scale(module: DistillModule) -> Optional[str]:
    """Say (rank zero) when nothing sets the student's own sharpness: ``sharpness_matching`` with ``kd_ratio`` 1.

    The rule divides each row of the student's logits by a τ of their own, τ_s ∝ x_s/(x_s + x_t), so the KD
    term is minimized by every positive multiple of the teacher's logits (z_s = k·z_t gives τ_s/τ_t = k): it fixes
    the student's shape but not its scale, and with the τ detached the steps drift along that ray toward flat
    logits — a student trained on it alone samples near uniform at temperature 1 (``docs/concepts/temperature.md``;
    tested on a free logit table in ``tests/losses/test_temperature.py``). The LM loss (``kd_ratio`` < 1) sets the
    scale, as DTKD trains with cross-entropy beside the KD term. Returns the line, or None."""
    rule = module.loss_config.tau_rule
    if rule != "sharpness_matching" or module.kd_ratio < 1 or module.teacher_config is None:
        return None
    line = (
        "lit_kd: model.loss.tau_rule sharpness_matching with model.kd_ratio 1: the rule divides the student's logits "
        "by a tau of their own, so the KD term fixes the student's shape but not its sharpness, and a student "
        "trained on it alone drifts toward uniform (samples near random text at temperature 1); set model.kd_ratio "
        "below 1 (e.g. 0.9: the LM loss sets the sharpness) or use another tau_rule"
    )
    rank_zero_warn(line)
    return line


def check_monitors(callbacks: Iterable[Any], module: DistillModule, learning_rate_name: Optional[str]) -> None:
    """One ``ConfigError`` for a callback whose ``monitor`` this run never logs (the best checkpoint is the option
    ``checkpoint``; any other callback is named by its class under ``trainer.callbacks``)."""
    validation, steps = logged_metrics(module, learning_rate_name)
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if not isinstance(monitor, str) or monitor in validation | steps:
            continue
        name = type(callback).__name__
        where = "checkpoint" if name == "ModelCheckpoint" else f"trainer.callbacks {name}"
        hint = " (model.val_rouge is null: no ROUGE-L is computed)" if monitor.endswith("/rougeL") else ""
        raise ConfigError(
            f"{where}.monitor: {monitor!r} is never logged by this run{hint}; each validation logs "
            f"{', '.join(sorted(validation))}, and the training steps {', '.join(sorted(steps))}"
        )


def check_optimizer_factories(module: DistillModule) -> str:
    """Build ``model.optimizer`` and ``model.lr_scheduler`` on a probe parameter: their own argument checks as one
    ``ConfigError`` naming the option, and a learning rate that is not a finite number. Returns the optimizer's class
    name."""
    probe = [torch.nn.Parameter(torch.zeros(1))]
    try:
        optimizer = module.optimizer_factory(probe)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"model.optimizer: {err}") from None
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, (int, float)) and not math.isfinite(lr):
            raise ConfigError(f"model.optimizer.init_args.lr must be a finite number, got {lr}")
    if module.lr_scheduler_factory is not None:
        try:
            module.lr_scheduler_factory(optimizer)
        except ConfigError as err:
            raise ConfigError(f"model.lr_scheduler.init_args: {err}") from None
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"model.lr_scheduler: {err}") from None
    return type(optimizer).__name__
