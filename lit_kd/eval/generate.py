"""Batched generation: left-padded prompts, KV cache, seeded sampling, stop at EOS (and at a chat template's
end-of-turn token: the rendering's ``stop_ids``).

The paper's protocol samples at temperature 1 with no top-k/top-p truncation; ``greedy`` is an option.
Sampling runs inside ``torch.random.fork_rng`` seeded with ``seed`` (the caller's RNG state is restored
afterwards), so the same seed, prompts and batch size give the same text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

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
        """A Hugging Face generation config with every logits-shaping field set explicitly: transformers fills
        each field left ``None`` from the model's ``generation_config`` and then from its global defaults
        (which include top_k=50), so "unset" would not mean "off". ``generate_ids`` also hides the model's
        own generation config while it runs."""
        neutral = dict(
            top_k=self.top_k,  # 0 = no top-k truncation
            top_p=self.top_p,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
        )
        return GenerationConfig(
            do_sample=not self.greedy,
            temperature=self.temperature if not self.greedy else 1.0,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=list(stop_ids) if stop_ids and len(stop_ids) > 1 else tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **neutral,
        )


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
        with torch.random.fork_rng(devices=devices):  # manual_seed reseeds every device: restore them all
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
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
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

