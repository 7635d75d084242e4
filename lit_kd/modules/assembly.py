"""Assembling what a ``DistillModule`` computes with: the student, the teacher as a source (live, or its cache)
and the vocabulary both are compared over, with the checks the chunked loss needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.head import verify_head
from lit_kd.models.pair import build_pair, pair_vocab_size
from lit_kd.teacher import TeacherCache, TeacherSource, teacher_source


@dataclass
class Assembly:
    student: PreTrainedModel
    teacher_source: Optional[TeacherSource]
    vocab_size: int
    student_parameters: int

    def describe(self) -> str:
        """One line for the log: the student's parameters, the teacher and the vocabulary compared over."""
        teacher = f"; {self.teacher_source.describe()}" if self.teacher_source is not None else ""
        compared = f"compared over {self.vocab_size:,} vocabulary entries"
        return f"student: {self.student_parameters:,} trainable parameters{teacher}; {compared}"


def assemble(
    student: StudentConfig,
    teacher: Optional[ModelConfig],
    tokenizer: PreTrainedTokenizerBase,
    cache: Optional[TeacherCache] = None,
    chunked: bool = True,
) -> Assembly:
    """Load (or cut) the student and the teacher; with a teacher ``cache`` the teacher's body is loaded only to cut
    the student from it. ``chunked``: check that ``logits = head(hidden)`` holds exactly for both models."""
    pair = build_pair(student, teacher, keep_teacher=cache is None)
    teacher_head = cache.head if cache is not None else pair.teacher and pair.teacher.get_output_embeddings()
    teacher_width = teacher_head.weight.shape[0] if teacher_head is not None else None
    vocab_size = pair_vocab_size(tokenizer, pair.student, teacher_width, student, teacher)
    if chunked:
        verify_head(pair.student, "student", vocab_size)
        if pair.teacher is not None:
            verify_head(pair.teacher, "teacher", vocab_size)
    parameters = sum(p.numel() for p in pair.student.parameters())
    return Assembly(pair.student, teacher_source(pair.teacher, cache, vocab_size), vocab_size, parameters)
