"""Deriving a student from a parent model by keeping a subset of its decoder layers (DistilBERT-style)."""

from __future__ import annotations

import copy
from typing import Sequence

from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from lit_kd.errors import ConfigError


def find_layer_stack(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of decoder blocks (``model.layers`` for Llama, ``transformer.h`` for GPT-2, ...)."""
    n_layers = model.config.num_hidden_layers
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and name
    ]
    if len(stacks) != 1:
        found = ", ".join(name for name, _ in stacks) or "none"
        raise ConfigError(
            f"cannot identify the decoder layer list of {type(model).__name__} "
            f"({n_layers} layers; candidate ModuleLists: {found})"
        )
    return stacks[0]


def check_layers(layers: Sequence[int], available: int, parent: str = "the parent") -> None:
    """``ConfigError`` unless ``layers`` are strictly increasing indices into ``available`` decoder layers."""
    layers = list(layers)
    if not layers or any(b <= a for a, b in zip(layers, layers[1:])) or layers[0] < 0 or layers[-1] >= available:
        raise ConfigError(
            f"model.student.layers {layers} must be strictly increasing indices into the {available} decoder "
            f"layers of {parent} (0 to {available - 1})"
        )


def derive_student(parent: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A new model with the parent's embeddings, final norm, LM head and the chosen ``layers``, copied.

    Student layer j is the parent's layer ``layers[j]``; the config keeps everything else
    (including per-layer settings such as ``layer_types``, sliced to the kept layers).
    """
    stack_name, stack = find_layer_stack(parent)
    layers = list(layers)
    check_layers(layers, len(stack), type(parent).__name__)
    config = copy.deepcopy(parent.config)
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in layers]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    student = AutoModelForCausalLM.from_config(config, dtype=parent.dtype)

    parent_state = parent.state_dict()
    prefix = f"{stack_name}."
    mapped = {}
    for key in student.state_dict():
        source = key
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            source = f"{prefix}{layers[int(index)]}.{rest}"
        mapped[key] = parent_state[source]
    student.load_state_dict(mapped, strict=True)
    return student
