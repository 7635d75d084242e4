"""Rebuilding a ``DistillModule`` from a checkpoint or from a fit config (for evaluation and export)."""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from lit_kd.data.rendering import make_rendering
from lit_kd.errors import CheckpointError, ConfigError, LitKDError
from lit_kd.models import ModelConfig, load_tokenizer
from lit_kd.models.adapters import has_adapters
from lit_kd.models.export import exported_prompt_format, load_export
from lit_kd.modules.distill import DistillModule
from lit_kd.modules.state import HPARAMS_KEY, check_adapter_base, check_student_state
from lit_kd.utils.yaml_files import load_yaml_file

# what rebuilds a module: its own arguments, but not those of training only (optimizer, schedule, student-sampled
# outputs) nor the teacher cache (evaluation and export never compute a KD loss)
MODULE_ARGS = tuple(
    name
    for name in inspect.signature(DistillModule.__init__).parameters
    if name not in ("self", "optimizer", "lr_scheduler", "teacher_cache", "policy", "max_length")
)


def checkpoint_hparams(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The module arguments a lit_kd checkpoint carries (``lit_kd_hyper_parameters``; older checkpoints kept
    them in Lightning's ``hyper_parameters``)."""
    return checkpoint.get(HPARAMS_KEY) or checkpoint.get("hyper_parameters") or {}


def build_module(section: dict[str, Any], source: str, need_teacher: bool = True) -> DistillModule:
    """A ``DistillModule`` from its init arguments as plain data (a config's ``model:`` section, or a
    checkpoint's hyperparameters), validated by the same parser LightningCLI uses; models loaded.

    ``need_teacher=False`` skips the teacher's weights when the student has a source (and tokenizer) of its
    own; a student cut from the teacher's layers still needs the teacher to be built.
    """
    from jsonargparse import ArgumentParser

    section = {
        k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in section.items() if k in MODULE_ARGS
    }
    student = section.get("student") or {}
    if not need_teacher and (student.get("path") or student.get("gguf_file")):
        section = {**section, "teacher": None, "kd_ratio": 0.0, "cross_tokenizer": None}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DistillModule, "model", skip={"optimizer", "lr_scheduler"})
    try:
        module = parser.instantiate_classes(parser.parse_object({"model": section}))["model"]
    except LitKDError:
        raise
    except Exception as err:  # jsonargparse reports type errors as its own exception types
        raise ConfigError(f"{source}: invalid model settings: {err}") from None
    module.configure_model()
    return module


def module_from_config(path: str, need_teacher: bool = True) -> DistillModule:
    """The ``model:`` section of a fit config as a ``DistillModule`` with its models loaded (untrained student), and
    the prompt format of its ``data:`` section (linked to the module's, as the CLI links them)."""
    content = load_yaml_file(path)
    section = content.get("model") if isinstance(content, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: no `model:` section")
    data = content.get("data")
    if isinstance(data, dict) and "prompt_format" in data:
        section = {**section, "prompt_format": data["prompt_format"]}
    return build_module(section, path, need_teacher)


SHARDED_METADATA = "meta.pt"
"""The file beside the shards of a Lightning ``ModelParallelStrategy`` checkpoint with everything but the tensors."""


def read_checkpoint(path: str, mmap: bool = False, tensors: bool = True) -> dict[str, Any]:
    """A Lightning checkpoint as a dict (on the CPU), or a ``CheckpointError`` naming the file. A sharded checkpoint
    (the folder an FSDP2 run writes) is read whole on this one process (``read_sharded_checkpoint``), or only its
    metadata with ``tensors=False``."""
    if os.path.isdir(path):
        return read_sharded_checkpoint(path, tensors)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # torch raises several types for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint: truncated or damaged ({err})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint")
    return checkpoint


def read_sharded_checkpoint(path: str, tensors: bool = True) -> dict[str, Any]:
    """A sharded (distributed) checkpoint folder as one checkpoint dict: Lightning's ``meta.pt`` (loops, callbacks,
    hyperparameters) and, with ``tensors``, the weights and optimizer states gathered from the shards by
    ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` (through a temporary file, read back mapped)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = Path(path)
    if not (folder / SHARDED_METADATA).is_file() or not (folder / ".metadata").is_file():
        raise CheckpointError(
            f"{path}: a folder that is not a sharded checkpoint of a lit_kd FSDP2 run (no {SHARDED_METADATA} and "
            ".metadata in it)"
        )
    try:
        checkpoint = torch.load(folder / SHARDED_METADATA, map_location="cpu", weights_only=False)
        if tensors:
            with tempfile.TemporaryDirectory(prefix="lit_kd-consolidate-") as scratch:
                consolidated = Path(scratch) / "checkpoint.pt"
                dcp_to_torch_save(folder, consolidated)
                checkpoint.update(torch.load(consolidated, map_location="cpu", weights_only=False, mmap=True))
    except Exception as err:  # torch raises several types for a damaged shard or metadata file
        raise CheckpointError(f"{path}: not a readable sharded checkpoint: truncated or damaged ({err})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint")
    return checkpoint


def module_from_checkpoint(path: str, need_teacher: bool = True) -> DistillModule:
    """A ``DistillModule`` rebuilt from the hyperparameters a checkpoint carries, with its student weights."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint_hparams(checkpoint)
    if "student" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a lit_kd DistillModule checkpoint (no student hyperparameters)")
    module = build_module(full_precision_base(hparams), path, need_teacher)
    if has_adapters(module.student):  # adapters only fit the base they were trained on
        check_adapter_base(checkpoint, module, path)
    load_student_state(module, checkpoint["state_dict"], path)
    return module


def full_precision_base(hparams: dict[str, Any]) -> dict[str, Any]:
    """A QLoRA checkpoint's hyperparameters with the base unquantized: its adapters (the same tensors, by the same
    names) are read onto the full-precision weights, which ``export`` merges them into (QLoRA's own practice) and
    ``evaluate`` runs on any device."""
    student = hparams.get("student")
    peft = student.get("peft") if isinstance(student, dict) else None
    if not (isinstance(peft, dict) and peft.get("quantize")):
        return hparams
    return {**hparams, "student": {**student, "peft": {**peft, "quantize": None}}}


def load_student_state(module: DistillModule, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load student weights (with adapters: the adapters alone, over the base built from its source), or explain
    which architecture the checkpoint came from."""
    check_student_state(module.state_dict(), state_dict, source)
    module.load_state_dict(state_dict, strict=module.strict_loading)


def source_label(source: str, which: str = "student") -> str:
    """How results name a model source: ``student (distilled)``, ``student (untrained)``, ``teacher`` or a
    directory / hub name."""
    if which not in ("student", "teacher"):
        raise ConfigError(f"model must be 'student' or 'teacher', got {which!r}")
    if source.endswith((".ckpt", ".yaml", ".yml")):
        trained = "distilled" if source.endswith(".ckpt") else "untrained"
        return f"student ({trained})" if which == "student" else "teacher"
    return Path(source.rstrip("/")).name


def model_from_source(source: str, which: str = "student", prompt_format: Optional[str] = None):
    """(model, rendering, label) from a .ckpt, a fit config (.yaml), or a Hugging Face directory / hub id. The
    rendering (``lit_kd.data.rendering``) is the model's tokenizer under ``prompt_format``; by default the one the
    checkpoint, config or export was trained with (``dolly`` for any other Hugging Face model)."""
    label = source_label(source, which)
    if source.endswith((".ckpt", ".yaml", ".yml")):
        load = module_from_checkpoint if source.endswith(".ckpt") else module_from_config
        module = load(source, need_teacher=which == "teacher")
        model = module.student if which == "student" else module.teacher
        if model is None:
            raise ConfigError(f"{source} has no teacher")
        own = module.teacher_tokenizer if which == "teacher" else None  # a cross-tokenizer teacher reads its own
        trained = module.hparams.get("prompt_format", "dolly")
        return model, make_rendering(own or module.tokenizer, prompt_format or trained), label
    config = ModelConfig(path=source)
    tokenizer = load_tokenizer(config, "model")
    exported = exported_prompt_format(source) if os.path.isdir(source) else None  # a lit_kd export names its own
    return load_export(config), make_rendering(tokenizer, prompt_format or exported or "dolly"), label
