"""Where the KD step gets the teacher from: a live model, or the hidden states stored in a teacher cache.

Both give, for the response rows of a batch (mask ``[B, T-1]``, row-major), either the teacher's final hidden
states ``[N, d]`` (for the chunked loss, with ``head``) or its logits ``[N, V]`` (the full-logits path).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from transformers import PreTrainedModel

from lit_kd.models.head import OutputHead, final_hidden_states, output_head
from lit_kd.teacher.cache import TeacherCache


class LiveTeacher:
    """The frozen teacher model, run on each batch (no gradients)."""

    def __init__(self, model: PreTrainedModel, vocab_size: Optional[int] = None) -> None:
        self.model = model
        self.vocab_size = vocab_size

    @property
    def head(self) -> OutputHead:
        return output_head(self.model, self.vocab_size)

    @torch.no_grad()
    def hidden_rows(self, batch: dict[str, Any], mask: Tensor, split: str) -> Tensor:
        hidden = final_hidden_states(self.model, batch["input_ids"], batch["attention_mask"])
        return hidden[:, :-1][mask]

    @torch.no_grad()
    def logits_rows(self, batch: dict[str, Any], mask: Tensor, split: str) -> Tensor:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, :-1, : self.vocab_size][mask]


class CachedTeacher:
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

    def hidden_rows(self, batch: dict[str, Any], mask: Tensor, split: str) -> Tensor:
        if "index" not in batch:
            raise KeyError("a teacher cache needs each batch's example indices (batch['index'], from DollyDataModule)")
        counts = mask.sum(dim=1).tolist()
        rows = self.cache.rows(split, batch["index"].tolist(), expected_rows=counts)
        return rows.to(mask.device)

    def logits_rows(self, batch: dict[str, Any], mask: Tensor, split: str) -> Tensor:
        return self.head.logits(self.hidden_rows(batch, mask, split))
