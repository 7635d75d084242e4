"""How sure a model is on the reference responses (teacher-forced, τ = 1): the DRKL paper's claim that RKL makes
the student overconfident, measured.

For every response token t of every example's first reference (its reply, rendered as in training: the Dolly
template, or the chat template with the last reply supervised, its end-of-turn token included), with
p = softmax(z) the model's next-token distribution given the prompt and the reference so far:

* **mean token entropy** H(p) = −Σ_k p_k log p_k (nats), averaged over the tokens;
* **expected calibration error** of the next-token confidence max_k p_k against whether argmax_k p_k = t:
  Σ_b (n_b / N)·|accuracy_b − confidence_b| over 15 equal-width confidence bins (Guo et al., ICML 2017), computed by
  torchmetrics' ``BinaryCalibrationError`` (l1 norm) on the pairs (max_k p_k, 1[argmax_k p_k = t]): the same value as
  its ``MulticlassCalibrationError`` on the full p, which bins exactly these pairs, without passing ``[rows, V]``
  tensors through it.

The logits come chunk by chunk from the model's hidden states and LM head (``lit_kd.models.head``), so at most
``chunk_size`` rows of ``[rows, V]`` exist at a time; examples are batched in order of length (less padding; both
statistics are sums over tokens, so the order changes nothing).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import PreTrainedModel

from lit_kd.data.collate import PadCollator
from lit_kd.data.conversation import with_response
from lit_kd.data.rendering import Rendering
from lit_kd.data.tokenize import response_mask
from lit_kd.losses.core import entropy
from lit_kd.models.head import final_hidden_states, output_head

CALIBRATION_BINS = 15


@torch.no_grad()
def reference_confidence(
    model: PreTrainedModel,
    rendering: Rendering,
    records: Sequence[dict[str, Any]],
    max_length: int,
    batch_size: int = 8,
    chunk_size: int = 512,
) -> dict[str, float]:
    """``{"entropy", "ece"}`` of ``model`` on the first reference of each record (see the module docstring)."""
    from torchmetrics.classification import BinaryCalibrationError

    tokenizer, rendering = rendering.tokenizer, rendering.for_turns("last")
    vocab = min(model.get_output_embeddings().weight.shape[0], len(tokenizer))  # a padded head's extra rows: no
    head = output_head(model, vocab)
    device = head.weight.device
    ece = BinaryCalibrationError(n_bins=CALIBRATION_BINS, norm="l1").to(device)
    entropy_sum, tokens = 0.0, 0
    examples = []
    for record in records:
        references = record["output"]
        reference = references if isinstance(references, str) else references[0]
        encoded = rendering.encode(with_response(record, reference), max_length)

        if not encoded["dropped"]:
            examples.append({"input_ids": encoded["input_ids"], "labels": encoded["labels"]})
    examples.sort(key=lambda example: len(example["input_ids"]))
    collate = PadCollator(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            rows = response_mask(labels)
            hidden = final_hidden_states(model, ids, mask)[:, :-1][rows]
            targets = labels[:, 1:][rows]
            for first in range(0, hidden.shape[0], chunk_size):
                log_p = torch.log_softmax(head.logits(hidden[first : first + chunk_size]).float(), dim=-1)
                entropy_sum += float(entropy(log_p).sum())
                tokens += log_p.shape[0]
                confidence, predicted = log_p.max(dim=-1)
                ece.update(confidence.exp(), (predicted == targets[first : first + chunk_size]).long())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("reference_confidence: no response token in the records")
    return {"entropy": entropy_sum / tokens, "ece": float(ece.compute())}
