"""A causal LM split at its LM head: ``logits = head(h)``, h the final hidden states (after the final norm and,
for OPT, ``project_out``), so logits can be computed for a few rows at a time (chunked losses) or from
stored hidden states (the teacher cache).

    h = model.get_decoder()(input_ids, attention_mask).last_hidden_state   # [B, T, d], in model(...)'s forward
    logits = h @ W.T (+ b)                                                  # W = model.get_output_embeddings()

This is exact only where the architecture applies nothing after its LM head. ``verify_head`` checks it
numerically on the model itself (and names a config field such as Gemma-2's ``final_logit_softcapping`` or
Cohere's ``logit_scale`` when one is set): a model where it does not hold is an error, never a silent
approximation.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from lit_kd.errors import ConfigError
from lit_kd.models.adapters import base_model

# config fields of architectures that transform the LM head's output (scaling, soft-capping)
LOGIT_POSTPROCESSING_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class OutputHead:
    """The LM head as tensors: ``logits = hidden @ weight.T + bias``, cut to the first ``vocab_size`` columns."""

    weight: Tensor
    """``[V_head, d]`` (may be a tied embedding, or a trainable parameter: gradients flow into it)"""
    bias: Optional[Tensor] = None
    vocab_size: Optional[int] = None
    """compare over the first ``vocab_size`` logits (a head padded to a multiple of 64 has extra rows)"""

    @property
    def width(self) -> int:
        """The number of logits ``logits`` gives per row: ``vocab_size``, or every row of the weight."""
        return self.weight.shape[0] if self.vocab_size is None else self.vocab_size

    def logits(self, hidden: Tensor) -> Tensor:
        """``[rows, d] → [rows, vocab_size]`` in the head's dtype."""
        weight = self.weight if self.vocab_size is None else self.weight[: self.vocab_size]
        bias = self.bias if self.bias is None or self.vocab_size is None else self.bias[: self.vocab_size]
        return F.linear(hidden.to(weight.dtype), weight, bias)

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]


def output_head(model: PreTrainedModel, vocab_size: Optional[int] = None) -> OutputHead:
    """The model's LM head (its live parameters: a student's head keeps receiving gradients)."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"{type(model).__name__}: its LM head is a {type(head).__name__}, not a linear layer; chunked losses and "
            "the teacher cache need logits = hidden @ W.T (+ b) (set model.chunk_size: null and use a live teacher)"
        )
    return OutputHead(head.weight, head.bias, vocab_size)


def final_hidden_states(model: PreTrainedModel, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    """The LM head's input ``[B, T, d]``: the decoder's last hidden state (``model.get_decoder()``), no logits
    computed.

    It is taken from the model's own forward, run with no position's logits kept (``logits_to_keep`` an empty
    index), by a forward hook on the decoder. So under FSDP2 the root unit's parameters (embeddings, final
    norm, LM head) are gathered as in any forward and stay gathered until the backward: the chunked loss then
    applies the live head without another all-gather, and its gradient is reduce-scattered with the root's."""
    captured: list[Tensor] = []
    hook = model.get_decoder().register_forward_hook(lambda _, args, output: captured.append(output.last_hidden_state))
    try:
        no_position = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=no_position, use_cache=False)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise ConfigError(
            f"{type(model).__name__}: its forward did not run its decoder ({type(model.get_decoder()).__name__}) "
            "once; chunked losses and the teacher cache need its last hidden state: set model.chunk_size: null"
        )
    return captured[0]


def check_logits_to_keep(model: PreTrainedModel, role: str) -> None:
    """``final_hidden_states`` needs a forward that takes ``logits_to_keep`` (every causal LM of transformers 5; a
    student with adapters passes it on to its base model's)."""
    if "logits_to_keep" not in inspect.signature(base_model(model).forward).parameters:
        raise ConfigError(
            f"{role} ({type(model).__name__}): its forward takes no logits_to_keep, which chunked losses and the "
            "teacher cache use to run it without computing logits; set model.chunk_size: null and use a live teacher"
        )


@torch.no_grad()
def verify_head(model: PreTrainedModel, role: str, vocab_size: Optional[int] = None) -> None:
    """Raise ``ConfigError`` unless ``head(final_hidden_states(x))`` reproduces ``model(x).logits`` on a probe input.

    The comparison is exact up to float rounding (a relative tolerance of 1e-5 of the logits' scale): the same
    matmul in both. A model that scales or caps its logits after the head fails here, before any training."""
    check_logits_to_keep(model, role)
    fields = [f"{name}={getattr(model.config, name)}" for name in LOGIT_POSTPROCESSING_FIELDS
              if getattr(model.config, name, None) not in (None, 1, 1.0)]  # fmt: skip
    device = next(model.parameters()).device
    probe = torch.arange(1, 9, device=device).remainder(model.config.vocab_size)[None]
    mask = torch.ones_like(probe)
    was_training = model.training
    model.eval()
    try:
        expected = model(input_ids=probe, attention_mask=mask).logits
        head = output_head(model, vocab_size)
        got = head.logits(final_hidden_states(model, probe, mask))
    finally:
        model.train(was_training)
    expected = expected[..., : got.shape[-1]].float()
    difference = (got.float() - expected).abs().max().item()
    scale = expected.abs().max().item()
    if not difference <= 1e-5 * max(scale, 1.0):
        detail = f" (its config sets {', '.join(fields)})" if fields else ""
        raise ConfigError(
            f"{role} ({type(model).__name__}): its logits are not its LM head applied to its last hidden "
            f"state{detail}; max difference {difference:.3g}. Chunked losses and the teacher cache would be "
            "approximations: set model.chunk_size: null and use a live teacher"
        )
