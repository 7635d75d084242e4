"""Dynamic padding: each batch is padded to its own longest sequence."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from lit_kd.data.tokenize import IGNORE_INDEX


class PadCollator:
    """Right-pads ``input_ids`` with ``pad_id`` and ``labels`` with -100; builds the attention mask.
    A ``reference`` (the response text) passes through as the list ``references``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.as_tensor(example["input_ids"])
            labels[row, :n] = torch.as_tensor(example["labels"])
            attention_mask[row, :n] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "reference" in examples[0]:
            batch["references"] = [example["reference"] for example in examples]
        return batch
