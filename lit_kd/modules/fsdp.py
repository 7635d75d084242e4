"""FSDP2 for Hugging Face decoders (``configs/strategies/fsdp.yaml``: Lightning's ``ModelParallelStrategy``).

``shard_student`` applies ``torch.distributed.fsdp.fully_shard`` to each decoder block (GPT-2's ``GPT2Block``,
OPT's and Llama's ``*DecoderLayer``: every Hugging Face block derives from ``GradientCheckpointingLayer``), then to
the whole student, whose root unit holds the embeddings, the final norm and the LM head (so a head tied to the
input embeddings, as GPT-2's is, stays one parameter). The teacher is not a child of the LightningModule: it is
never sharded. On a GPU the compute runs in bfloat16 with float32 gradient reduction (FSDP2's
``MixedPrecisionPolicy``); on a CPU in the student's own dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from transformers.modeling_layers import GradientCheckpointingLayer

from lit_kd.errors import ConfigError


def shard_student(student: nn.Module, mesh: DeviceMesh) -> None:
    """One FSDP2 unit per decoder block, then the root (see the module docstring); a sharded student is left as is."""
    if isinstance(student, FSDPModule):
        return
    blocks = [module for module in student.modules() if isinstance(module, GradientCheckpointingLayer)]
    if not blocks:
        raise ConfigError(
            f"FSDP: no decoder blocks found in the student ({type(student).__name__}): its layers do not derive from "
            "transformers' GradientCheckpointingLayer; use the ddp strategy for this model"
        )
    options: dict = {"mesh": mesh}
    if mesh.device_type == "cuda":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(student, **options)
