"""What a ``DistillModule`` checkpoint holds besides the weights, and checking that its weights fit the student."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from torch import Tensor

from lit_kd.errors import CheckpointError

HPARAMS_KEY = "lit_kd_hyper_parameters"
"""Where checkpoints keep the module's arguments, as plain data (see ``DistillModule.on_save_checkpoint``)."""


def check_student_state(expected: dict[str, Tensor], given: dict[str, Tensor], source: str) -> None:
    """Raise ``CheckpointError`` unless ``given`` has exactly the student's tensor names and shapes."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong_shape):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} student tensors missing (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong_shape:
        k = wrong_shape[0]
        details.append(f"shape of {k} is {tuple(given[k].shape)}, the student has {tuple(expected[k].shape)}")
    raise CheckpointError(f"{source} was saved from another student architecture: " + "; ".join(details))


def plain(value: Any) -> Any:
    """Dataclasses as dicts, recursively: checkpoint hyperparameters that ``torch.load(weights_only=True)`` reads."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def store_module_state(
    checkpoint: dict[str, Any], hparams: dict[str, Any], nonfinite: Any, policy: Optional[Any]
) -> None:
    """The module's arguments as plain data under ``lit_kd_hyper_parameters`` (not Lightning's ``hyper_parameters``,
    which LightningCLI would parse back over an explicit ``--model.*`` on resume), the skipped-batch count and the
    student policy's state."""
    checkpoint.pop("hyper_parameters", None)
    checkpoint.pop("hparams_name", None)
    checkpoint[HPARAMS_KEY] = plain(dict(hparams))
    checkpoint["lit_kd_skipped_batches"] = nonfinite.skipped
    if policy is not None:
        checkpoint["lit_kd_policy"] = policy.state_dict()


def restore_module_state(
    checkpoint: dict[str, Any], student_state: dict[str, Tensor], nonfinite: Any, policy: Optional[Any]
) -> None:
    """Refuse a checkpoint of another student architecture with a clear error; restore what ``store_module_state``
    kept. (A sharded checkpoint's weights are loaded by the strategy itself, outside this dict.)"""
    if "state_dict" in checkpoint:
        check_student_state(student_state, checkpoint["state_dict"], "the checkpoint")
    nonfinite.skipped = checkpoint.get("lit_kd_skipped_batches", 0)
    if policy is not None and "lit_kd_policy" in checkpoint:
        policy.load_state_dict(checkpoint["lit_kd_policy"])
