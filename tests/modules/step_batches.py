"""Micro-batches with very different response-token counts, and the module they train, shared by the
token-exact normalization tests and their DDP script."""

from __future__ import annotations

from typing import Any

import torch

from lit_kd.data.collate import PadCollator
from lit_kd.data.tokenize import encode_example
from lit_kd.losses import LossConfig
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.modules import DistillModule
from tests.conftest import TINY_TOKENIZER, tiny_llama_config

# (instruction, response) per micro-batch; their response-token counts differ by an order of magnitude
MICRO_BATCHES = [
    [("Say yes.", "Yes.")],
    [("Describe the sea.", "The sea is wide and deep, " * 6), ("Name a fruit.", "An apple, a pear and a plum.")],
    [("Count to five.", "One, two, three, four, five.")],
    [("Describe a town.", "A small town with a river, a bridge and an old mill. " * 2)],
]


def sgd(params):
    return torch.optim.SGD(params, lr=1.0)


def make_module(chunk_size: int | None = 16) -> DistillModule:
    teacher = ModelConfig(config=tiny_llama_config(3), tokenizer=str(TINY_TOKENIZER))
    module = DistillModule(
        student=StudentConfig(layers=[0, 2]),
        teacher=teacher,
        loss=LossConfig("fkl", tau=2.0),
        kd_ratio=0.7,
        optimizer=sgd,
        lr_scheduler=None,
        diagnostics=False,
        chunk_size=chunk_size,
    )
    module.configure_model()
    return module


def collate(tokenizer, rows: list[tuple[str, str]], first_index: int = 0) -> dict[str, Any]:
    examples = [
        {**encode_example(tokenizer, instruction, "", response, 256), "index": first_index + i}
        for i, (instruction, response) in enumerate(rows)
    ]
    return PadCollator(tokenizer.pad_token_id)(examples)


def response_tokens(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def micro_batches(tokenizer) -> list[dict[str, Any]]:
    return [collate(tokenizer, rows) for rows in MICRO_BATCHES]


def one_big_batch_gradient(module: DistillModule, batches: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The gradient of Σ ℓ / N over all rows of ``batches`` put in one batch."""
    rows = [row for group in MICRO_BATCHES[: len(batches)] for row in group]
    big = collate(module.tokenizer, rows)
    module.student.zero_grad()
    sums = module.compute_losses(big, "train")
    (sums.loss / sums.tokens).backward()
    return {name: p.grad.clone() for name, p in module.student.named_parameters()}
