"""The run's hyperparameters in TensorBoard's HParams tab, with its best validation score."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from lit_kd.modules import DistillModule


def run_hparams(pl_module: L.LightningModule) -> dict[str, Any]:
    """What distinguishes a run, for TensorBoard's HParams tab: the objective, τ (and its schedule or per-token
    rule when set) and each of its hyperparameters that applies, τ² scaling, kd_ratio, the seed, the student and
    the teacher (and where it comes from), and the prompt format."""
    params: dict[str, Any] = {"seed": int(os.environ.get("PL_GLOBAL_SEED", -1))}
    if not isinstance(pl_module, DistillModule):
        return params
    loss, student, teacher = pl_module.loss_config, pl_module.student_config, pl_module.teacher_config
    policy = pl_module.policy
    params.update(objective=loss.name, tau=loss.tau, tau_squared_scaling=loss.tau_squared_scaling)
    if loss.tau_schedule != "constant":  # τ is the schedule's start
        params.update(tau_schedule=loss.tau_schedule, tau_end=loss.tau_end, tau_horizon=loss.tau_horizon,
                      tau_horizon_unit=loss.tau_horizon_unit)  # fmt: skip
    if loss.tau_rule != "none":  # τ is the rule's base
        params.update(tau_rule=loss.tau_rule, tau_min=loss.tau_min, tau_max=loss.tau_max)
        if loss.tau_rule == "entropy_target":
            params["tau_target_entropy"] = loss.tau_target_entropy
    params.update({f"loss.{field}": value for field, value in loss.objective_hparams().items()})
    params.update(kd_ratio=pl_module.kd_ratio, chunk_size=pl_module.chunk_size)
    params["student"] = student.describe() if student.has_source else "cut from the teacher"
    params["student.layers"] = str(student.layers) if student.layers is not None else "all"
    params["student.peft"] = student.peft.describe() if student.peft is not None else "none"  # adapters, or all weights
    params["teacher"] = teacher.describe() if teacher is not None else "none"
    # λ: the share of each batch the student samples itself
    params["student_fraction"] = policy.student_fraction if policy is not None else 0.0
    params["adaptive_policy"] = policy is not None and policy.adaptive is not None
    params["teacher_cache"] = pl_module.teacher_cache_path is not None
    params["prompt_format"] = pl_module.rendering.name  # dolly or chat_template: how the data was rendered
    return params


class HParamsSummary(L.Callback):
    """Each run's hyperparameters (``run_hparams``) in TensorBoard's HParams tab with its best validation ROUGE-L
    (``hp/best_val_rougeL``, updated after every validation; falls back to the lowest ``val/loss`` as
    ``hp/best_val_loss`` when ROUGE-L is off), so ``tensorboard --logdir <sweep dir>`` compares a sweep's runs
    by objective and τ. The best value travels in checkpoints, so a resumed run keeps it."""

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))

    @staticmethod
    def tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {"hp/best_val_rougeL": self.best.get("hp/best_val_rougeL", float("nan")),
                   "hp/best_val_loss": self.best.get("hp/best_val_loss", float("nan"))}  # fmt: skip
        for logger in self.tensorboards(trainer):
            logger.log_hyperparams(run_hparams(pl_module), metrics=metrics)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        found = trainer.callback_metrics
        for tag, key, better in (("hp/best_val_rougeL", "val/rougeL", max), ("hp/best_val_loss", "val/loss", min)):
            if key in found:
                value = float(found[key])
                self.best[tag] = better(self.best.get(tag, value), value)
        for logger in self.tensorboards(trainer):
            logger.log_metrics(dict(self.best), step=trainer.global_step)
