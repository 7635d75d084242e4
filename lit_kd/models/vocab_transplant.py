"""A student cut from the teacher but reading text with a tokenizer of its own: its embeddings (and LM head) are
rebuilt for the new vocabulary, each row started from the teacher's.

Student entry s gets the teacher's row of the entry that spells the same bytes (``VocabularyMap``); an entry the
teacher has no equal of gets the mean of the teacher's rows of the tokens the teacher splits its text into (its
string, decoded by the student's tokenizer), and an entry with no text (a special token, a lone byte that is not
valid UTF-8 alone) the mean of all the teacher's rows. The first rule is the issue's ("embeddings initialized from
the teacher's for tokens whose strings match"); the second is the usual heuristic for new vocabulary entries (as in
WECHSEL/FOCUS, without their similarity weighting), so no row starts random.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.models.vocab_map import VocabularyMap


def teacher_pieces(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, vocabulary: VocabularyMap
) -> list[list[int]]:
    """For every real student entry, the teacher ids its row starts from (empty: the mean of all rows)."""
    matched = dict(zip(vocabulary.student_ids.tolist(), vocabulary.teacher_ids.tolist()))
    special = set(student.all_special_ids)
    pending = [index for index in range(len(student)) if index not in matched and index not in special]
    texts = [student.convert_tokens_to_string([student.convert_ids_to_tokens(index)]) for index in pending]
    encoded = teacher(texts, add_special_tokens=False)["input_ids"] if texts else []
    pieces: list[list[int]] = [[matched[index]] if index in matched else [] for index in range(len(student))]
    for index, text, ids in zip(pending, texts, encoded):
        pieces[index] = [] if "\ufffd" in text else list(ids)  # undecodable alone: no text to split
    return pieces


def mean_rows(weight: torch.Tensor, pieces: list[list[int]]) -> torch.Tensor:
    """``[len(pieces), d]``: the mean of ``weight``'s rows ``pieces[i]`` (all rows where it is empty)."""
    overall = weight.mean(0)
    return torch.stack([weight[ids].mean(0) if ids else overall for ids in pieces])


@torch.no_grad()
def transplant_vocabulary(
    model: PreTrainedModel,
    teacher: PreTrainedTokenizerBase,
    student: PreTrainedTokenizerBase,
    vocabulary: VocabularyMap,
) -> PreTrainedModel:
    """``model`` (the teacher's layers, still with the teacher's vocabulary) resized to the student's tokenizer with
    ``resize_token_embeddings`` and its embedding and head rows started as the module docstring says; the config's
    EOS/BOS/pad ids become the student tokenizer's."""
    pieces = teacher_pieces(teacher, student, vocabulary)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    head_rows = None if tied else head.weight.detach().clone()
    model.resize_token_embeddings(len(student), mean_resizing=False)
    model.get_input_embeddings().weight.copy_(mean_rows(embeddings, pieces))
    if head_rows is not None:
        model.get_output_embeddings().weight.copy_(mean_rows(head_rows, pieces))
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        setattr(model.config, name, getattr(student, name))
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, name, getattr(student, name))
    return model
