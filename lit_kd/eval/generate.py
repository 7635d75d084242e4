"""Batched generation: left-padded prompts, KV cache, seeded sampling, stop at EOS (and at a chat template's
end-of-turn token: the rendering's ``stop_ids``).

The paper's protocol samples at temperature 1 with no top-k/top-p truncation; ``greedy`` is an option.
Sampling runs inside ``torch.random.fork_rng`` seeded with ``seed`` (the caller's RNG state is restored
afterwards), so the same seed, prompts and batch size give the same text.

Two things make a CPU decoding step cheaper without changing what is sampled (``benchmarks/generation_speed.py``):
each token is drawn by inverse transform sampling (``InverseCdfSampler``: one uniform per row, where
``torch.multinomial`` draws an exponential per vocabulary entry: 0.55 s of the demo's 2.8 s on-policy generation),
and a wide output head computes its few decoding rows as ``(W · hᵀ)ᵀ`` (``RowsAsColumnsHead``: MKL runs that
shape on both cores, ``h · Wᵀ`` with 8 rows on barely one).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lit_kd.errors import ConfigError
from lit_kd.models.adapters import base_model
from lit_kd.utils.fields import check_field_types

if TYPE_CHECKING:
    from lit_kd.data.rendering import Rendering


@dataclass
class SamplingConfig:
    """How responses are generated for evaluation."""

    max_new_tokens: int = 256
    """Generated tokens per response at most (generation stops earlier at EOS)."""
    temperature: float = 1.0
    """Sampling temperature (the paper: 1.0). Not the distillation τ."""
    top_k: int = 0
    """Keep the k most likely tokens before sampling; 0 = no truncation (the paper)."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 = no truncation (the paper)."""
    greedy: bool = False
    """Greedy decoding instead of sampling."""
    batch_size: int = 32
    """Prompts per generate call."""
    max_length: int = 1024
    """Prompt + response tokens at most; longer prompts keep their last tokens (the response part)."""

    def __post_init__(self) -> None:
        check_field_types(self, "generation")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("generation: max_new_tokens and batch_size must be positive")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"generation: temperature must be finite and > 0, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("generation: top_k must be >= 0 and top_p in (0, 1]")
        if self.max_length <= self.max_new_tokens:
            raise ConfigError(f"generation: max_length ({self.max_length}) must exceed max_new_tokens")

    def hf_config(
        self, tokenizer: PreTrainedTokenizerBase, stop_ids: Optional[Sequence[int]] = None
    ) -> GenerationConfig:
        """A Hugging Face generation config that selects greedily and shapes the logits with nothing: sampling is
        done by ``logits_processors`` (temperature, top-k, top-p, then the draw), whose output greedy selection
        picks. Every logits-shaping field is set to its neutral value explicitly: transformers fills each field
        left ``None`` from the model's ``generation_config`` and then from its global defaults, so "unset" would
        not mean "off". ``generate_ids`` also hides the model's own generation config while it runs."""
        neutral = dict(typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
                       no_repeat_ngram_size=0, num_beams=1)  # fmt: skip
        return GenerationConfig(
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=list(stop_ids) if stop_ids and len(stop_ids) > 1 else tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **neutral,
        )

    def logits_processors(self) -> LogitsProcessorList:
        """What turns the next-token logits into the chosen token's one-hot scores: transformers' own warpers for
        temperature, top-k and top-p (in the order its sampling applies them), then ``InverseCdfSampler``.
        Empty for greedy decoding."""
        if self.greedy:
            return LogitsProcessorList()
        warpers: list[LogitsProcessor] = []
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return LogitsProcessorList([*warpers, InverseCdfSampler()])


class InverseCdfSampler(LogitsProcessor):
    """Draws each row's next token from softmax(scores) by inverse transform sampling and returns scores that are
    0 at the drawn token and −inf elsewhere, so that greedy selection picks it.

        p = softmax(s),  F_j = Σ_{i ≤ j} p_i (float64),  u ~ U[0, F_V),  token = min{ j : F_j > u }

    A token of probability 0 (a −inf score) has F_j = F_{j−1} and is never drawn. One uniform per row, drawn from
    the global generator (seeded by ``generate_ids``), where ``torch.multinomial`` draws an exponential for every
    vocabulary entry (8.7 ms against 0.3 ms for 8 rows of 49,152 on this CPU)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cumulative = torch.softmax(scores.float(), dim=-1).double().cumsum_(dim=-1)
        total = cumulative[:, -1:]
        u = torch.rand(total.shape, dtype=total.dtype, device=total.device) * total
        token = torch.searchsorted(cumulative, u, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


class RowsAsColumnsHead(torch.nn.Module):
    """A CPU output head's logits for a few rows as ``(W · hᵀ)ᵀ``: the same product as ``h · Wᵀ`` (``nn.Linear``),
    in the shape MKL spreads over every core when there are few rows and many outputs (a decoding step: 8 rows
    of 49,152 outputs took 16 ms as ``h · Wᵀ`` and 8.5 ms as ``(W · hᵀ)ᵀ`` on this 2-core CPU)."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        logits = (self.head.weight @ rows.T).T
        if self.head.bias is not None:
            logits = logits + self.head.bias
        return logits.reshape(*hidden.shape[:-1], logits.shape[-1])


WIDE_HEAD = 8192
"""Outputs from which a CPU head decodes as ``RowsAsColumnsHead`` (measured faster for 8–128 rows of 49,152 and
50,257 outputs; about even for 1–4 rows)."""


@contextmanager
def rows_as_columns_head(model: PreTrainedModel) -> Iterator[None]:
    """Within the block, ``model``'s output head is a ``RowsAsColumnsHead`` when it is a plain ``nn.Linear`` on the
    CPU with at least ``WIDE_HEAD`` outputs (through ``set_output_embeddings``; the same weight, restored after)."""
    head = model.get_output_embeddings()
    swap = type(head) is torch.nn.Linear and head.weight.device.type == "cpu" and head.out_features >= WIDE_HEAD
    swap = swap and type(head.weight) is torch.nn.Parameter  # not a sharded (DTensor) or quantized head
    if not swap:
        yield
        return
    model.set_output_embeddings(RowsAsColumnsHead(head))
    try:
        yield
    finally:
        model.set_output_embeddings(head)


def encode_prompts(rendering: "Rendering", records: Sequence[dict], settings: SamplingConfig) -> list[list[int]]:
    """Token ids of each record's prompt, rendered as in training (``rendering.prompt_ids``: the Dolly template, or
    the turns before the reply with the chat template's generation prompt). A prompt longer than
    ``max_length − max_new_tokens`` keeps its last tokens: its beginning (template header, start of the
    instruction) is lost, the input and the ``### Response:`` marker (the assistant header) are kept."""
    return [fit_prompt(rendering.prompt_ids(record), settings) for record in records]


def fit_prompt(prompt: Sequence[int], settings: SamplingConfig) -> list[int]:
    """The last ``max_length − max_new_tokens`` tokens of a prompt."""
    return list(prompt[-(settings.max_length - settings.max_new_tokens) :])


@torch.no_grad()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    settings: SamplingConfig,
    seed: int,
    on_batch: Optional[Callable[[int], None]] = None,
    min_new_tokens: int = 0,
    keep_eos: bool = False,
    stop_ids: Optional[Sequence[int]] = None,
) -> list[list[int]]:
    """Generated token ids per prompt, cut at the first stop token (``stop_ids``, default the EOS; kept with
    ``keep_eos``: the training target of a sampled response ends with it). ``on_batch(n)`` reports progress."""
    device = next(model.parameters()).device
    base = base_model(model)  # a student with adapters generates through its base model's generation config
    was_training, model_defaults = model.training, base.generation_config
    stops = list(stop_ids) if stop_ids else [tokenizer.eos_token_id]
    config = settings.hf_config(tokenizer, stops)
    config.min_new_tokens = min_new_tokens or None
    pad = tokenizer.pad_token_id
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        model.eval()
        base.generation_config = GenerationConfig()  # the model's own sampling defaults must not leak in
        with torch.random.fork_rng(devices=devices), rows_as_columns_head(base):  # fork: restore every device's RNG
            torch.manual_seed(seed)
            outputs = _generate_batches(model, prompts, settings, config, pad, stops, device, on_batch, keep_eos)
    finally:
        base.generation_config = model_defaults
        model.train(was_training)
    return outputs


def _generate_batches(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    settings: SamplingConfig,
    config: GenerationConfig,
    pad: int,
    stops: Sequence[int],
    device: torch.device,
    on_batch: Optional[Callable[[int], None]],
    keep_eos: bool = False,
) -> list[list[int]]:
    """Left-pad each batch so every prompt ends where generation starts; cut each row at its first stop token."""
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), settings.batch_size):
        chunk = prompts[start : start + settings.batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, prompt in enumerate(chunk):
            input_ids[row, width - len(prompt) :] = torch.as_tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            logits_processor=settings.logits_processors(),
        )
        for row in generated[:, width:].tolist():
            end = next((i for i, token in enumerate(row) if token in stops), None)
            outputs.append(row if end is None else row[: end + keep_eos])
        if on_batch is not None:
            on_batch(len(chunk))
    return outputs


def decode_responses(tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]]) -> list[str]:
    """Response texts of ``generate_ids``' output: special tokens dropped, surrounding space stripped."""
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def generate_responses(
    model: PreTrainedModel,
    rendering: "Rendering",
    records: Sequence[dict],
    settings: SamplingConfig,
    seed: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[str]:
    """The model's response text to each record's prompt (its reply: a conversation's last assistant turn)."""
    tokenizer = rendering.tokenizer
    prompts = encode_prompts(rendering, records, settings)
    ids = generate_ids(model, tokenizer, prompts, settings, seed, on_batch, stop_ids=rendering.stop_ids)
    return decode_responses(tokenizer, ids)

