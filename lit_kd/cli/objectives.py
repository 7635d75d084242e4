"""``python -m lit_kd objectives``: the registry as a table, with each objective's hyperparameters (default and
valid range) and its value on the fixed input of objectives.md §6 (τ = 1, τ = 3, and τ = 3 with τ² scaling),
computed in float32 and float64."""

from __future__ import annotations

import torch

from lit_kd.losses import OBJECTIVES
from lit_kd.losses.reference import fixed_input_values


def objectives() -> None:
    """Print the registry: each objective's hyperparameters (default, valid range), its value on the reference's
    fixed input and its formula.

    The values are those of ``../shared/reference/objectives.md`` §6 (τ = 1, τ = 3, τ = 3 with τ² scaling, float64),
    and float32 at τ = 3: a check that an implementation matches the reference. Each objective's source, gradient
    and use: docs/concepts/objectives.md."""
    hparams = {
        name: ", ".join(f"{h.field}={h.default} {h.range_text}" for h in objective.hparams) or "-"
        for name, objective in OBJECTIVES.items()
    }
    width = max(len(text) for text in hparams.values())
    print("objective | hyperparameters (default, range) | tau=1 | tau=3 | tau=3, tau^2 | float32 at tau=3 | formula")
    for name, objective in OBJECTIVES.items():
        t1, t3, t3_scaled = fixed_input_values(name)
        f32 = fixed_input_values(name, torch.float32)[1]
        row = f"{name:7s} | {hparams[name]:{width}s} | {t1:.10f} | {t3:.10f} | {t3_scaled:.10f} | {f32:.8f}"
        print(f"{row} | {objective.formula}")
    print()
    print(CROSS_TOKENIZER)


CROSS_TOKENIZER = """\
Across tokenizers (model.cross_tokenizer: {uld_weight, min_matched_share}; lit_kd.losses.cross_vocab):
  Each model reads the response with its own tokenizer; the two token sequences are aligned by UTF-8 byte offsets
  into groups covering the same text (1:1, 1:N, N:M). At a group's first row each side's distribution at its tau is
  read on buckets both share: the vocabulary map's matched entries (equal bytes after normalizing byte-level and
  SentencePiece markers), the group's string (each side's chain-rule probability of its own tokens) and the rest.
  Any objective above compares the buckets; ULD's sorted L1 (weight uld_weight) compares the unmatched mass.
  Exact: identical tokenizers give the objective itself (tested); a relabeled vocabulary likewise. Approximate: a
  group's probability is that of the realized tokenization, not the marginal over all of its tokenizations; the
  unmatched entries are compared only as a sorted multiset. On-policy: a sample is decoded and re-encoded by both;
  the teacher cache holds the teacher's own rows; model.chunk_size runs it through the heads chunk by chunk.
  Not yet: per-token tau rules (refused)."""
