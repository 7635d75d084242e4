"""Dynamic padding: each batch is padded to its own longest sequence."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_kd.data.alignment import GroupRows
from lit_kd.data.tokenize import IGNORE_INDEX, prompt_end


class IndexedExamples(Dataset):
    """A split's examples, each with its ``index`` (its position in the split: the key of its rows in a teacher
    cache)."""

    def __init__(self, examples: Sequence[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.examples[index], "index": index}


def pad(sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, ...]:
    """(input_ids, attention_mask, labels) right-padded to the longest sequence."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    padded_labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(zip(sequences, labels)):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        padded_labels[row, : len(ids)] = torch.as_tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask, padded_labels


class PadCollator:
    """Right-pads ``input_ids`` with ``pad_id`` and ``labels`` with -100; builds the attention mask.
    A ``reference`` (the response text) passes through as the list ``references``, an ``index`` as a tensor, a
    ``prompt_length`` (where the reply that generation would sample starts) as the tensor ``prompt_lengths``.
    Examples of a cross-tokenizer pair (``lit_kd.data.alignment.encode_pair_example``) also give the teacher's
    ``teacher_input_ids``/``teacher_attention_mask``/``teacher_labels`` (padded with ``teacher_pad_id``) and their
    aligned ``groups`` as rows of the batch's flattened response rows (``GroupRows``)."""

    def __init__(self, pad_id: int, teacher_pad_id: Optional[int] = None) -> None:
        self.pad_id = pad_id
        self.teacher_pad_id = pad_id if teacher_pad_id is None else teacher_pad_id

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        input_ids, attention_mask, labels = pad(
            [e["input_ids"] for e in examples], [e["labels"] for e in examples], self.pad_id
        )
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "teacher_input_ids" in examples[0]:
            teacher = pad([e["teacher_input_ids"] for e in examples], [e["teacher_labels"] for e in examples],
                          self.teacher_pad_id)  # fmt: skip
            batch.update(zip(("teacher_input_ids", "teacher_attention_mask", "teacher_labels"), teacher))
            batch["groups"] = GroupRows.of_batch(examples)
        for key in ("prompt_length", "teacher_prompt_length"):
            if key in examples[0]:
                batch[f"{key}s"] = torch.tensor([example[key] for example in examples], dtype=torch.long)
        if "reference" in examples[0]:
            batch["references"] = [example["reference"] for example in examples]
        if "index" in examples[0]:  # the examples' positions in their split (the teacher cache's keys)
            batch["index"] = torch.tensor([example["index"] for example in examples], dtype=torch.long)
        return batch


def teacher_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the teacher reads it: a cross-tokenizer batch's ``teacher_*`` fields as ``input_ids``,
    ``attention_mask``, ``labels`` and ``prompt_lengths`` (``index`` kept: the teacher cache's key); any other
    batch as it is."""
    if "teacher_input_ids" not in batch:
        return batch
    names = ("input_ids", "attention_mask", "labels", "prompt_lengths")
    view = {name: batch[f"teacher_{name}"] for name in names if f"teacher_{name}" in batch}
    return view | ({"index": batch["index"]} if "index" in batch else {})


def prompt_lengths(batch: dict[str, Any]) -> list[int]:
    """Where each row's last reply starts (the prompt generation continues): the batch's ``prompt_lengths``, or, in
    a batch built without them, each row's first supervised token (the same for one-reply examples)."""
    if "prompt_lengths" in batch:
        return batch["prompt_lengths"].tolist()
    return [prompt_end(row) for row in batch["labels"]]


def batch_rows(batch: dict[str, Any]) -> int:
    """Sequences in a batch (``ThroughputMonitor``'s samples)."""
    return int(batch["input_ids"].shape[0])


def batch_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens in a batch (``ThroughputMonitor``'s items: tokens per second)."""
    return int(batch["attention_mask"].sum())
