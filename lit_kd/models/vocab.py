"""Teacher and student must speak the same vocabulary: compare tokenizers and logit widths."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from lit_kd.errors import VocabularyMismatchError


def check_same_tokenizer(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, teacher_name: str, student_name: str
) -> None:
    """The two tokenizers must map the same strings to the same ids."""
    teacher_vocab, student_vocab = teacher.get_vocab(), student.get_vocab()
    if teacher_vocab == student_vocab:
        return
    differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()), key=lambda kv: kv[1])[:3]
    example = ", ".join(f"{tok!r}→{idx}" for tok, idx in differing)
    raise VocabularyMismatchError(
        f"teacher {teacher_name!r} ({len(teacher_vocab)} tokens) and student {student_name!r} "
        f"({len(student_vocab)} tokens) use different tokenizers (first differences: {example}); to distill "
        "across tokenizers set model.cross_tokenizer (see python -m lit_kd objectives)"
    )


def shared_vocab_size(
    tokenizer: PreTrainedTokenizerBase, teacher_width: int, student_width: int, teacher_name: str, student_name: str
) -> int:
    """The number of logit columns to compare: the tokenizer's real vocabulary.

    Widths may exceed it by padded rows (GPT-2's 50257 tokens in a 50304-wide head); a width below it
    means the model cannot score every token of the tokenizer, which is a genuine mismatch.
    """
    real = len(tokenizer)
    if teacher_width < real or student_width < real:
        raise VocabularyMismatchError(
            f"teacher {teacher_name!r} has {teacher_width} output logits and student {student_name!r} has "
            f"{student_width}, but their shared tokenizer has {real} tokens: both must be at least {real}"
        )
    return real


def real_vocab_size(tokenizer: PreTrainedTokenizerBase, width: int, role: str, name: str) -> int:
    """A model's real vocabulary (``len(tokenizer)``) when its head has ``width`` rows, at least that many (rows
    beyond it are padding); used for each side of a cross-tokenizer pair."""
    real = len(tokenizer)
    if width < real:
        raise VocabularyMismatchError(
            f"{role} {name!r} has {width} output logits, but its tokenizer has {real} tokens: it cannot score them all"
        )
    return real
