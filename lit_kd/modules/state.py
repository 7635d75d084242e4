"""What a ``DistillModule`` checkpoint holds besides the weights, and checking that its weights fit the student."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from lit_kd.errors import CheckpointError
from lit_kd.models.adapters import has_adapters, trainable_names
from lit_kd.teacher.cache import teacher_identity

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


ADAPTER_BASE_KEY = "lit_kd_adapter_base"
"""Where a checkpoint of a student with adapters names the frozen base they were trained on."""


class CheckpointState:
    """What a ``DistillModule``'s checkpoints hold (mixed into it): the student's tensors — with adapters
    (``model.student.peft``) its trainable ones alone (the adapters and ``modules_to_save``), as its ``state_dict``
    is, so every strategy, FSDP2's sharded checkpoints included, saves and loads just those (the module loads them
    with ``strict_loading`` off) and the frozen base is rebuilt from its source, identified by ``adapter_base`` —
    with the module's arguments and counters (``store_module_state``), checked when read back
    (``restore_module_state``)."""

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)  # type: ignore[misc]
        if getattr(self, "student", None) is None or not has_adapters(self.student):
            return state
        prefix = kwargs.get("prefix", "")
        kept = trainable_names(self.student, prefix + "student.")
        for name in [name for name in state if name not in kept]:
            del state[name]
        return state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        store_module_state(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_module_state(checkpoint, self)


def adapter_base(module: Any) -> dict[str, Any]:
    """What identifies the frozen base of a student with adapters: its source (or the teacher it is cut from, and
    the layers kept), with the digests of every byte of its weight files (``teacher_identity``)."""
    student, teacher = module.student_config, module.teacher_config
    source = student if student.has_source else teacher
    return {"source": teacher_identity(source), "layers": student.layers}


def store_module_state(checkpoint: dict[str, Any], module: Any) -> None:
    """The module's arguments as plain data under ``lit_kd_hyper_parameters`` (not Lightning's ``hyper_parameters``,
    which LightningCLI would parse back over an explicit ``--model.*`` on resume), the skipped-batch count and the
    student policy's state; with adapters, the identity of their base."""
    checkpoint.pop("hyper_parameters", None)
    checkpoint.pop("hparams_name", None)
    checkpoint[HPARAMS_KEY] = plain(dict(module.hparams))
    checkpoint["lit_kd_skipped_batches"] = module.nonfinite.skipped
    if module.student_policy is not None:
        checkpoint["lit_kd_policy"] = module.student_policy.state_dict()
    if has_adapters(module.student):
        checkpoint[ADAPTER_BASE_KEY] = adapter_base(module)


def restore_module_state(checkpoint: dict[str, Any], module: Any) -> None:
    """Refuse a checkpoint of another student architecture, or adapters trained on another base, with a clear
    error; restore what ``store_module_state`` kept. (A sharded checkpoint's weights are loaded by the strategy
    itself, outside this dict.)"""
    if has_adapters(module.student):
        check_adapter_base(checkpoint, module, "the checkpoint")
    if "state_dict" in checkpoint:
        check_student_state(module.state_dict(), checkpoint["state_dict"], "the checkpoint")
    module.nonfinite.skipped = checkpoint.get("lit_kd_skipped_batches", 0)
    if module.student_policy is not None and "lit_kd_policy" in checkpoint:
        module.student_policy.load_state_dict(checkpoint["lit_kd_policy"])


def check_adapter_base(checkpoint: dict[str, Any], module: Any, source: str) -> None:
    """Adapters fit only the base they were trained on: one ``CheckpointError`` naming both when it changed."""
    stored, current = checkpoint.get(ADAPTER_BASE_KEY), adapter_base(module)
    if stored is None:
        raise CheckpointError(f"{source} holds no adapters' base (not saved from a student with model.student.peft)")
    if stored != current:
        raise CheckpointError(
            f"{source}'s adapters were trained on another base than this run's student: "
            f"{stored['source'].get('source')} (layers {stored['layers']}) with other weights or settings than "
            f"{current['source'].get('source')} (layers {current['layers']}); give the base they were trained on"
        )
