"""Where the KD step gets the teacher from: a live model, or the hidden states stored in a teacher cache.

Every source gives, for the response rows of a batch (mask ``[B, T-1]``, row-major), either the teacher's final
hidden states ``[N, d]`` (for the chunked loss, with ``head``) or its logits ``[N, V]`` (the full-logits path),
and the FLOPs it spends on them. The KD step sees only this interface (``TeacherSource``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedModel

from lit_kd.models.head import OutputHead, final_hidden_states, output_head
from lit_kd.teacher.cache import TeacherCache


class TeacherSource(ABC):
    """The frozen teacher as the KD step uses it."""

    model: Optional[PreTrainedModel] = None
    """The teacher's model when it is loaded (None when only its cached hidden states are)."""

    @property
    @abstractmethod
    def head(self) -> OutputHead:
        """The teacher's LM head: ``logits = head.logits(hidden)`` exactly."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "TeacherSource":
        """Move what the source computes with to ``device``."""

    @abstractmethod
    def hidden_rows(self, batch: dict[str, Any], mask: Tensor, stage: str) -> Tensor:
        """The teacher's final hidden states ``[N, d]`` at the ``mask``ed positions of ``batch`` (split ``stage``)."""

    def logits_rows(self, batch: dict[str, Any], mask: Tensor, stage: str) -> Tensor:
        """The teacher's logits ``[N, V]`` at the ``mask``ed positions."""
        return self.head.logits(self.hidden_rows(batch, mask, stage))

    def release(self) -> None:
        """Free what the step's loss gathered (a sharded teacher's root unit); called once the loss is computed."""

    @abstractmethod
    def flops(self, tokens: float, rows: int) -> float:
        """Forward FLOPs for a batch of ``tokens`` tokens with ``rows`` response rows."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the log: what the teacher is and where it comes from."""


class LiveTeacher(TeacherSource):
    """The frozen teacher model, run on each batch (no gradients)."""

    def __init__(self, model: PreTrainedModel, vocab_size: Optional[int] = None) -> None:
        self.model = model
        self.vocab_size = vocab_size
        self.parameters = sum(p.numel() for p in model.parameters())

    @property
    def head(self) -> OutputHead:
        return output_head(self.model, self.vocab_size)

    def to(self, device: torch.device | str) -> "LiveTeacher":
        if not isinstance(self.model, FSDPModule):  # a sharded teacher is already on its mesh's device
            self.model.to(device=device)
        return self

    @torch.no_grad()
    def hidden_rows(self, batch: dict[str, Any], mask: Tensor, stage: str) -> Tensor:
        hidden = final_hidden_states(self.model, batch["input_ids"], batch["attention_mask"])
        return hidden[:, :-1][mask]

    @torch.no_grad()
    def logits_rows(self, batch: dict[str, Any], mask: Tensor, stage: str) -> Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, :-1, : self.vocab_size][mask]

    def release(self) -> None:
        if isinstance(self.model, FSDPModule):  # model.teacher_sharding: shard (lit_kd.modules.fsdp)
            self.model.reshard()

    def flops(self, tokens: float, rows: int) -> float:
        return 2.0 * self.parameters * tokens

    def describe(self) -> str:
        return f"teacher: {self.parameters:,} frozen parameters"


class CachedTeacher(TeacherSource):
    """The teacher's hidden states read from a ``TeacherCache`` (its body is never run, nor loaded); its logits
    are recomputed with the cached LM head, exactly."""

    def __init__(self, cache: TeacherCache, vocab_size: Optional[int] = None) -> None:
        self.cache = cache
        self.vocab_size = vocab_size
        self._head = cache.head

    @property
    def head(self) -> OutputHead:
        return OutputHead(self._head.weight, self._head.bias, self.vocab_size)

    def to(self, device: torch.device | str) -> "CachedTeacher":
        self._head = OutputHead(
            self._head.weight.to(device), None if self._head.bias is None else self._head.bias.to(device)
        )
        return self

    def hidden_rows(self, batch: dict[str, Any], mask: Tensor, stage: str) -> Tensor:
        if "index" not in batch:
            raise KeyError("a teacher cache needs each batch's example indices (batch['index'], from DollyDataModule)")
        counts = mask.sum(dim=1).tolist()
        rows = self.cache.rows(stage, batch["index"].tolist(), expected_rows=counts)
        return rows.to(mask.device)

    def flops(self, tokens: float, rows: int) -> float:
        return 2.0 * self._head.weight.numel() * rows  # its LM head only

    def describe(self) -> str:
        return f"teacher from the cache {self.cache.path} (its body not loaded)"


def teacher_source(
    model: Optional[PreTrainedModel], cache: Optional[TeacherCache], vocab_size: Optional[int]
) -> Optional[TeacherSource]:
    """The source a run reads the teacher from: its cache when it has one, else the live model (None: no teacher)."""
    if cache is not None:
        return CachedTeacher(cache, vocab_size)
    return LiveTeacher(model, vocab_size) if model is not None else None
