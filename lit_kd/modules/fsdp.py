"""FSDP2 for Hugging Face decoders (``configs/strategies/fsdp.yaml``: Lightning's ``ModelParallelStrategy``).

``shard_student`` applies ``torch.distributed.fsdp.fully_shard`` to each decoder block (GPT-2's ``GPT2Block``,
OPT's and Llama's ``*DecoderLayer``: every Hugging Face block derives from ``GradientCheckpointingLayer``), then to
the whole student, whose root unit holds the embeddings, the final norm and the LM head (so a head tied to the
input embeddings, as GPT-2's is, stays one parameter). On a GPU the compute runs in bfloat16 with float32 gradient
reduction (FSDP2's ``MixedPrecisionPolicy``); on a CPU in the student's own dtype.

The root unit is gathered by the student's forward and, as FSDP2 does for a root, kept gathered until the
backward: the chunked loss applies the LM head to the hidden states after the forward
(``lit_kd.models.head.final_hidden_states``) with one all-gather per step, and the head's gradient is
reduce-scattered with the root's other parameters at the end of the backward.

The teacher is not a child of the LightningModule (never in the optimizer or the checkpoint). It is replicated on
every process unless ``model.teacher_sharding: shard``: ``shard_teacher`` then shards it the same way, in its own
dtype, each block resharded after its forward, so a process holds 1/W of it between steps; its root unit (its
embeddings and head) is gathered for the step's loss and resharded after it (``LiveTeacher.release``).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers.modeling_layers import GradientCheckpointingLayer

from lit_kd.errors import ConfigError


def shard_models(student: nn.Module, teacher: Optional[nn.Module], mesh: DeviceMesh) -> None:
    """Shard the student and, when given, the teacher over the ``data_parallel`` dimension of ``mesh`` (the device
    mesh of Lightning's ``ModelParallelStrategy``)."""
    mesh = mesh["data_parallel"]
    shard_student(student, mesh)
    if teacher is not None:
        shard_teacher(teacher, mesh)


def shard_student(student: nn.Module, mesh: DeviceMesh) -> None:
    """One FSDP2 unit per decoder block, then the root (see the module docstring); a sharded student is left as is."""
    options: dict = {"mesh": mesh}
    if mesh.device_type == "cuda":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    _shard_blocks_then_root(student, "student", options)


def shard_teacher(teacher: nn.Module, mesh: DeviceMesh) -> None:
    """The frozen teacher sharded like the student, in its own dtype (``model.teacher_sharding: shard``)."""
    _shard_blocks_then_root(teacher, "teacher", {"mesh": mesh})


def _shard_blocks_then_root(model: nn.Module, role: str, options: dict) -> None:
    if isinstance(model, FSDPModule):
        return
    blocks = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    if not blocks:
        raise ConfigError(
            f"FSDP: no decoder blocks found in the {role} ({type(model).__name__}): its layers do not derive from "
            "transformers' GradientCheckpointingLayer; use the ddp strategy (and a replicated teacher) for this model"
        )
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this process holds of ``tensors``: a sharded parameter's (DTensor's) local shard only."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        total += local.numel() * local.element_size()
    return total


def check_teacher_sharding(sharding: str, strategy: str, processes: Optional[int]) -> None:
    """``model.teacher_sharding: shard`` needs FSDP2 (``strategy``, a class name) over more than one process
    (``processes``: None where the configuration does not say how many)."""
    if sharding == "shard" and (strategy != ModelParallelStrategy.__name__ or (processes or 0) < 2):
        count = f", {processes} process(es)" if processes is not None else ""
        raise ConfigError(
            "model.teacher_sharding: shard splits the teacher over the processes of FSDP2: add --config "
            f"configs/strategies/fsdp.yaml with trainer.devices (x num_nodes) >= 2 (this run: strategy {strategy}"
            f"{count}), or set model.teacher_sharding: replicate"
        )
