"""Micro-batches with very different response-token counts, and the module they train, shared by the
token-exact normalization tests and their DDP script."""

from __future__ import annotations

from typing import Any

import torch

from lit_kd.data.collate import PadCollator
from lit_kd.data.tokenize import encode_example
from lit_kd.losses import LossConfig
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.adapters import AdapterConfig
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


def make_module(
    chunk_size: int | None = 16, objective: str = "fkl", tied: bool = False, optimizer=sgd, lora: bool = False,
    **options: Any,
) -> DistillModule:
    """The student cut from layers 0 and 2 of a 3-layer teacher (its LM head tied to its embeddings with ``tied``;
    rank-4 LoRA adapters on its frozen weights with ``lora``, their B matrices started from a seeded draw instead of
    zeros so that every adapter weight gets a gradient); ``options`` go to ``DistillModule`` (``teacher_cache``,
    ``teacher_sharding``)."""
    config = tiny_llama_config(3, tie_word_embeddings=tied)
    module = DistillModule(
        student=StudentConfig(layers=[0, 2], peft=AdapterConfig(r=4, alpha=8.0) if lora else None),
        teacher=ModelConfig(config=config, tokenizer=str(TINY_TOKENIZER)),
        loss=LossConfig(objective, tau=2.0),
        kd_ratio=0.7,
        optimizer=optimizer,
        lr_scheduler=None,
        diagnostics=False,
        chunk_size=chunk_size,
        **options,
    )
    module.configure_model()
    if lora:
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, parameter in module.student.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
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
    """``MICRO_BATCHES`` collated, their examples numbered in order (``batch["index"]``, as a teacher cache reads)."""
    starts = [sum(len(group) for group in MICRO_BATCHES[:k]) for k in range(len(MICRO_BATCHES))]
    return [collate(tokenizer, rows, start) for rows, start in zip(MICRO_BATCHES, starts)]


def write_micro_batch_cache(module: DistillModule, folder) -> str:
    """A teacher cache of ``module``'s live teacher over ``micro_batches`` (split "train", examples in order)."""
    from lit_kd.models.head import final_hidden_states, output_head
    from lit_kd.teacher.build import build_teacher_cache
    from lit_kd.teacher.cache import CacheKey

    teacher, batches = module.teacher, micro_batches(module.tokenizer)
    sizes = {"train": (sum(len(group) for group in MICRO_BATCHES), sum(response_tokens(b) for b in batches))}
    key = CacheKey(teacher={"source": "tests"}, tokenizer="tiny", template="", max_length=256)
    hidden = lambda batch: final_hidden_states(teacher, batch["input_ids"], batch["attention_mask"])  # noqa: E731
    return str(build_teacher_cache(folder, key, output_head(teacher), {"train": lambda: batches}, sizes, hidden))


def one_big_batch_gradient(
    module: DistillModule, batches: list[dict[str, Any]], which: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """The gradient of Σ ℓ / N over all rows of ``batches`` (or of micro-batches ``which``) put in one batch."""
    which = list(range(len(batches))) if which is None else which
    rows = [row for k in which for row in MICRO_BATCHES[k]]
    big = collate(module.tokenizer, rows)
    module.student.zero_grad()
    sums = module.compute_losses(big, "train")
    (sums.loss / sums.tokens).backward()
    return {name: p.grad.clone() for name, p in module.student.named_parameters() if p.requires_grad}
