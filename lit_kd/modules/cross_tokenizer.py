"""The KD step across tokenizers (``model.cross_tokenizer``): a teacher and a student that read the same text with
tokenizers of their own.

The data module encodes each example twice (``lit_kd.data.alignment.encode_pair_example``): the student's tokens
(``input_ids``/``labels``: what it trains, generates and is evaluated on) and the teacher's (``teacher_*``), with
the groups of response tokens that cover the same bytes. The step runs each model on its own tokens and compares
them group by group over the vocabulary map built once per pair (``lit_kd.losses.cross_vocab``: the selected
objective with τ on the matched part, ULD's sorted L1 on the rest).

The student is a model with its own tokenizer, or the teacher's ``layers`` with ``model.student.tokenizer``: its
embedding and head rows then start from the teacher's (``lit_kd.models.vocab_transplant``).

Supported today, with any of the ten objectives, a τ schedule and ``tau_squared_scaling``: off-policy distillation
from the data, the teacher live or from its cache (``cache-teacher`` stores the teacher's rows of its own
tokenization; the cache's key names both tokenizers); on- and mixed-policy (``model.policy``: a student's sample is
decoded and both sides encode its text, ``StudentPolicy.mix``); sequence-level KD (``generate-data`` samples with
the teacher's own tokenizer and writes text). Not yet: per-token τ rules (refused with one error). With
``model.chunk_size`` the step runs through the heads chunk by chunk (``lit_kd.losses.cross_vocab_chunked``: at most
one chunk of either side's logits at a time), else from full logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from transformers import PreTrainedTokenizerBase

from lit_kd.data.collate import teacher_view
from lit_kd.data.tokenize import response_mask
from lit_kd.errors import ConfigError
from lit_kd.losses import LossConfig
from lit_kd.losses.chunked import TokenSums, rows_per_chunk
from lit_kd.losses.cross_vocab import cross_vocab_token_sums
from lit_kd.losses.cross_vocab_chunked import chunked_cross_vocab_token_sums
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.head import final_hidden_states, output_head
from lit_kd.models.pair import pair_tokenizers as models_pair_tokenizers
from lit_kd.models.vocab_map import MIN_MATCHED_SHARE, VocabularyMap, build_vocabulary_map
from lit_kd.modules.temperature import scheduled_loss
from lit_kd.utils.fields import check_field_types


@dataclass
class CrossTokenizerConfig:
    """``model.cross_tokenizer``: distill between models that do not share a tokenizer (``{}`` for the defaults)."""

    uld_weight: float = 1.0
    """Weight of ULD's sorted-L1 term on the probability mass the vocabulary map cannot match (0: none)."""
    min_matched_share: float = MIN_MATCHED_SHARE
    """The least share of the teacher's vocabulary the map must match; a pair below it is refused."""

    def __post_init__(self) -> None:
        check_field_types(self, "model.cross_tokenizer")
        if not (math.isfinite(self.uld_weight) and self.uld_weight >= 0):
            raise ConfigError(f"model.cross_tokenizer.uld_weight must be finite and ≥ 0, got {self.uld_weight}")
        if not 0 < self.min_matched_share <= 1:
            raise ConfigError(
                f"model.cross_tokenizer.min_matched_share must be in (0, 1], got {self.min_matched_share}"
            )


def check_cross_tokenizer(
    cross: Optional[CrossTokenizerConfig],
    student: StudentConfig,
    teacher: Optional[ModelConfig],
    loss: Optional[LossConfig],
) -> None:
    """One ``ConfigError`` naming the setting a cross-tokenizer run cannot (yet) combine with."""
    if cross is None:
        return
    if teacher is None:
        raise ConfigError("model.cross_tokenizer needs model.teacher: it distills between two tokenizers")
    if not student.has_source and student.tokenizer is None:
        raise ConfigError(
            "model.cross_tokenizer needs a student with a tokenizer of its own: a source (path, gguf_file or config "
            "with tokenizer), or the teacher's layers with model.student.tokenizer (its embeddings then start from "
            "the teacher's); a student cut from the teacher without one shares the teacher's vocabulary"
        )
    if student.peft is not None and not student.has_source:
        raise ConfigError(
            "model.cross_tokenizer with model.student.peft: a student cut from the teacher gets its own vocabulary's "
            "embedding and head rows transplanted from the teacher's, which must train, and adapters keep them "
            "frozen; train the full student, or give the student a source of its own (its embeddings already fit "
            "its tokenizer)"
        )
    if loss is not None and loss.tau_rule != "none":
        raise ConfigError(
            f"model.cross_tokenizer cannot be combined with model.loss.tau_rule {loss.tau_rule} yet: the "
            "cross-vocabulary term takes one τ per step (a τ schedule works); drop one of the two"
        )


def pair_tokenizers(
    student: StudentConfig, teacher: Optional[ModelConfig], cross: Optional[CrossTokenizerConfig]
) -> tuple[PreTrainedTokenizerBase, Optional[PreTrainedTokenizerBase], Optional[VocabularyMap]]:
    """(the tokenizer of the data, generation and evaluation; the teacher's own and the pair's vocabulary map, with
    ``cross``). The map is built once, before any model loads (its matched share is logged with the models,
    ``Assembly.describe``)."""
    tokenizer, teacher_tokenizer = models_pair_tokenizers(student, teacher, cross is not None)
    if cross is None or teacher_tokenizer is None:
        return tokenizer, None, None
    return tokenizer, teacher_tokenizer, build_vocabulary_map(teacher_tokenizer, tokenizer, cross.min_matched_share)


def cross_token_sums(module: Any, batch: dict[str, Any], stage: str, diagnostics: bool = False) -> TokenSums:
    """The step's token sums for a cross-tokenizer ``DistillModule``: the student on its tokens, the teacher on
    its own (``teacher_input_ids``), compared over the batch's aligned ``groups``; through the heads chunk by chunk
    (``model.chunk_size``) or from full logits (``chunk_size: null``)."""
    mask = response_mask(batch["labels"])
    targets = batch["labels"][:, 1:][mask]
    source = module.teacher_source if module.kd_ratio > 0 else None
    teacher_batch = teacher_mask = teacher_targets = None
    if source is not None:
        if "teacher_input_ids" not in batch:
            raise ConfigError(
                "model.cross_tokenizer: the batch has no teacher tokens; connect the data module with the teacher's "
                "tokenizer too (DollyDataModule.connect(module.tokenizer, module.teacher_tokenizer))"
            )
        teacher_batch = teacher_view(batch)
        teacher_mask = response_mask(teacher_batch["labels"])
        teacher_targets = teacher_batch["labels"][:, 1:][teacher_mask]
        module.vocabulary = module.vocabulary.to(targets.device)
    loss, cross, groups = scheduled_loss(module), module.cross_tokenizer, batch.get("groups")
    if module.chunk_size is None:
        student_rows = module(batch["input_ids"], batch["attention_mask"])[:, :-1, : module.vocab_size][mask]
        teacher_rows = source.logits_rows(teacher_batch, teacher_mask, stage) if source is not None else None
        sums = cross_vocab_token_sums(loss, student_rows, teacher_rows, targets, teacher_targets, groups,
                                      module.vocabulary, module.kd_ratio, cross.uld_weight,
                                      diagnostics=diagnostics)  # fmt: skip
    else:
        hidden = final_hidden_states(module.student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
        teacher_hidden = source.hidden_rows(teacher_batch, teacher_mask, stage) if source is not None else None
        head = output_head(module.student, module.vocab_size)
        sums = chunked_cross_vocab_token_sums(
            loss, hidden, head, teacher_hidden, source and source.head, targets, teacher_targets, groups,
            module.vocabulary, module.kd_ratio, cross.uld_weight, rows_per_chunk(module.chunk_size, head), diagnostics,
        )  # fmt: skip
    if source is not None:
        source.release()
    return sums
