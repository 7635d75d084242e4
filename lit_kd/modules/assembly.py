"""Assembling what a ``DistillModule`` computes with: the student, the teacher as a source (live, or its cache)
and the vocabulary both are compared over, with the checks the chunked loss needs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.head import verify_head
from lit_kd.models.pair import build_pair, pair_vocab_size
from lit_kd.models.vocab import real_vocab_size
from lit_kd.models.vocab_map import VocabularyMap
from lit_kd.models.vocab_transplant import transplant_vocabulary
from lit_kd.teacher import TeacherCache, TeacherSource, teacher_source


@dataclass
class Assembly:
    student: PreTrainedModel
    teacher_source: Optional[TeacherSource]
    vocab_size: int
    student_parameters: int
    trainable_parameters: Optional[int] = None
    """with adapters (``model.student.peft``): the adapters' parameters (and ``modules_to_save``'s)"""
    teacher_vocab_size: Optional[int] = None
    """the teacher's real vocabulary when it has a tokenizer of its own (``model.cross_tokenizer``)"""
    vocabulary: Optional[VocabularyMap] = None
    """then the map between the two vocabularies"""

    def describe(self) -> str:
        """One line for the log: the student's parameters, the teacher and the vocabulary compared over."""
        teacher = f"; {self.teacher_source.describe()}" if self.teacher_source is not None else ""
        compared = f"compared over {self.vocab_size:,} vocabulary entries"
        if self.teacher_vocab_size is not None:
            sizes = f"{self.vocab_size:,} (student) and {self.teacher_vocab_size:,} (teacher)"
            compared = f"vocabularies of {sizes} entries; {self.vocabulary.describe() if self.vocabulary else ''}"
        trainable = f"{self.student_parameters:,} trainable parameters"
        if self.trainable_parameters is not None:
            trainable = f"{self.student_parameters:,} parameters, {self.trainable_parameters:,} trainable (adapters)"
        return f"student: {trainable}{teacher}; {compared}"


def assemble(
    student: StudentConfig,
    teacher: Optional[ModelConfig],
    tokenizer: PreTrainedTokenizerBase,
    cache: Optional[TeacherCache] = None,
    chunked: bool = True,
    teacher_tokenizer: Optional[PreTrainedTokenizerBase] = None,
    vocabulary: Optional[VocabularyMap] = None,
) -> Assembly:
    """Load (or cut) the student and the teacher; with a teacher ``cache`` the teacher's body is loaded only to cut
    the student from it. ``chunked``: check that ``logits = head(hidden)`` holds exactly for both models. A
    ``teacher_tokenizer`` of its own (a cross-tokenizer pair, its ``vocabulary`` map): each model is read over its
    own real vocabulary, and a student cut from the teacher gets its tokenizer's (``transplant_vocabulary``)."""
    transplant = None
    if teacher_tokenizer is not None and vocabulary is not None:
        transplant = partial(transplant_vocabulary, teacher=teacher_tokenizer, student=tokenizer, vocabulary=vocabulary)
    pair = build_pair(student, teacher, keep_teacher=cache is None, new_vocabulary=transplant)
    teacher_head = cache.head if cache is not None else pair.teacher and pair.teacher.get_output_embeddings()
    teacher_width = teacher_head.weight.shape[0] if teacher_head is not None else None
    if teacher_tokenizer is not None and teacher is not None and teacher_width is not None:
        student_width = pair.student.get_output_embeddings().weight.shape[0]
        vocab_size = real_vocab_size(tokenizer, student_width, "student", student.describe())
        teacher_size = real_vocab_size(teacher_tokenizer, teacher_width, "teacher", teacher.describe())
    else:
        vocab_size = teacher_size = pair_vocab_size(tokenizer, pair.student, teacher_width, student, teacher)
    if chunked:
        verify_head(pair.student, "student", vocab_size)
        if pair.teacher is not None:
            verify_head(pair.teacher, "teacher", teacher_size)
    parameters = sum(p.numel() for p in pair.student.parameters())
    trainable = sum(p.numel() for p in pair.student.parameters() if p.requires_grad) if student.peft else None
    source = teacher_source(pair.teacher, cache, teacher_size)
    if teacher_tokenizer is None:
        return Assembly(pair.student, source, vocab_size, parameters, trainable)
    return Assembly(pair.student, source, vocab_size, parameters, trainable, teacher_size, vocabulary)
