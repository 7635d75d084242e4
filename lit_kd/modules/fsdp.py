"""FSDP wrapping for Hugging Face decoders (used by ``configs/strategies/fsdp.yaml``)."""

from __future__ import annotations

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


def decoder_layer_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP ``auto_wrap_policy``: one FSDP unit per decoder block (GPT-2's ``GPT2Block``, OPT's and Llama's
    ``*DecoderLayer``: every Hugging Face block derives from ``GradientCheckpointingLayer``). The teacher is not
    a child of the LightningModule, so it is never wrapped."""
    return True if recurse else isinstance(module, GradientCheckpointingLayer)
