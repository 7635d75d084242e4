"""Checks of a built run that need no model weights, made before any model loads or anything is written: what a
run would otherwise find only after training has started.

* **Monitored metrics**: a checkpoint or an early stop (any callback with a ``monitor``) that watches a metric this
  configuration never logs — ROUGE-L with ``model.val_rouge: null``, a typo, a metric of another regime — would stop
  the run at its first validation (Lightning's ``MisconfigurationException``); it is refused now, with the metrics
  the run does log. ``logged_metrics`` is that list, kept equal to what a run logs by a test over the regimes.
* **The optimizer and LR-scheduler factories**: built once on a one-element probe parameter, so their own checks
  (a negative learning rate, betas outside [0, 1), ...) speak now, named by their option, instead of in
  ``configure_optimizers`` after the models have loaded.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch

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
