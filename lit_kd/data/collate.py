"""Dynamic padding: each batch is padded to its own longest sequence."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from lit_kd.data.tokenize import IGNORE_INDEX


class IndexedExamples(Dataset):
    """A split's examples, each with its ``index`` (its position in the split: the key of its rows in a teacher
    cache)."""

    def __init__(self, examples: Sequence[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.examples[index], "index": index}


class PadCollator:
    """Right-pads ``input_ids`` with ``pad_id`` and ``labels`` with -100; builds the attention mask.
    A ``reference`` (the response text) passes through as the list ``references``, an ``index`` as a tensor."""

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
        if "index" in examples[0]:  # the examples' positions in their split (the teacher cache's keys)
            batch["index"] = torch.tensor([example["index"] for example in examples], dtype=torch.long)
        return batch


def batch_rows(batch: dict[str, Any]) -> int:
    """Sequences in a batch (``ThroughputMonitor``'s samples)."""
    return int(batch["input_ids"].shape[0])


def batch_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens in a batch (``ThroughputMonitor``'s items: tokens per second)."""
    return int(batch["attention_mask"].sum())
