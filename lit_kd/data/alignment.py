"""Aligning two tokenizations of the same response text: the groups of teacher and student tokens that cover the
same bytes, for distillation across vocabularies.

Only the response is aligned: KD is taken on response tokens, and each side encodes its prompt (its own template,
BOS or chat format) however its tokenizer does. Under the Dolly template each side tokenizes the response text
alone, without special tokens (as ``lit_kd.data.tokenize.encode_example`` does), so the two token sequences spell
the same string. Under each model's chat template (``lit_kd.data.chat_template``) each side renders the whole
conversation with its own template, and every supervised reply is aligned on its own: the tokens of its content
(their offsets in each side's rendered text, so the bytes both sides share), then each side's end-of-turn token as
one 1:1 group (as EOS is); template text is never aligned. A reply that one side dropped with its earliest
exchanges (``max_length``) is aligned on neither.

A tokenization can be **cut** at text position c when every token before ends at or before c and every token after
starts at or after c (offsets from the fast tokenizer's ``offset_mapping``; a character position, converted to its
UTF-8 byte position). Tokens that split one multi-byte character (an emoji as four byte tokens) share that
character's offsets, so no cut falls inside a character. Leading whitespace trimmed from a token's offsets is given
to that token (the cut sits where the previous tokens end), as both byte-level BPE (``Ġ``) and SentencePiece
(``▁``) attach a space to the token after it. A **group** is the run of tokens between two consecutive cuts that
both sides share: 1:1 where the tokenizations agree, 1:N or N:M where one splits digits, words or characters
differently. Within a group whose two sides are the same tokens (same strings, same spans) each token is its own
group, so identical tokenizers align 1:1 everywhere, split characters included.

The end of the sequence (each side's EOS, appended after the response) is a last 1:1 group when both sides kept it.
A response truncated on one side (``max_length``) keeps the groups that lie wholly within both sides' kept tokens.
Tokens in no group (past a truncation, or text one normalizer drops and the other keeps at the very end) take no
part in the cross-vocabulary KD term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_kd.data.tokenize import head_tokens, response_length
from lit_kd.errors import ConfigError

if TYPE_CHECKING:
    from lit_kd.data.rendering import Rendering

Span = tuple[int, int]
"""A token range ``[start, end)`` of a side's response tokens."""


@dataclass(frozen=True)
class Tokenized:
    """A side's tokens of a response: ids, their token strings and their byte spans in the text's UTF-8 bytes."""

    ids: list[int]
    tokens: list[str]
    spans: list[tuple[int, int]]


@dataclass(frozen=True)
class Alignment:
    """``groups[g] = (teacher tokens, student tokens)``: the token ranges covering the same text, in order."""

    groups: list[tuple[Span, Span]]

    @property
    def teacher_tokens(self) -> int:
        return self.groups[-1][0][1] if self.groups else 0

    @property
    def student_tokens(self) -> int:
        return self.groups[-1][1][1] if self.groups else 0

    def shape_counts(self) -> dict[str, int]:
        """How many groups are 1:1, 1:N (one teacher token), N:1 (one student token) and N:M."""
        counts = {"1:1": 0, "1:N": 0, "N:1": 0, "N:M": 0}
        for (t0, t1), (s0, s1) in self.groups:
            one_teacher, one_student = t1 - t0 == 1, s1 - s0 == 1
            key = "1:1" if one_teacher and one_student else "1:N" if one_teacher else "N:1" if one_student else "N:M"
            counts[key] += 1
        return counts


@dataclass
class GroupRows:
    """Aligned groups as row ranges of each side's response rows (``[G]`` long tensors): group g is teacher rows
    ``[teacher_start[g], teacher_end[g])`` and student rows ``[student_start[g], student_end[g])``; row r holds the
    logits that predict the side's response token r (its target). Not frozen: Lightning moves a batch's
    dataclasses to the device by rebuilding them."""

    teacher_start: Tensor
    teacher_end: Tensor
    student_start: Tensor
    student_end: Tensor

    @classmethod
    def from_groups(cls, groups: list[tuple[tuple[int, int], tuple[int, int]]], device=None) -> "GroupRows":
        columns = list(zip(*[(t0, t1, s0, s1) for (t0, t1), (s0, s1) in groups])) or [[], [], [], []]
        return cls(*(torch.tensor(column, dtype=torch.long, device=device) for column in columns))

    def __len__(self) -> int:
        return int(self.teacher_start.numel())

    @classmethod
    def of_batch(cls, examples: Sequence[dict[str, Any]]) -> "GroupRows":
        """The groups of a batch's examples as rows of its flattened response rows (row-major, as the module gathers
        them: each example's response tokens, EOS included, after the previous examples')."""
        groups, offset_t, offset_s = [], 0, 0
        for example in examples:
            groups += [((t0 + offset_t, t1 + offset_t), (s0 + offset_s, s1 + offset_s)) for t0, t1, s0, s1 in
                       example["groups"]]  # fmt: skip
            offset_t += response_length(example["teacher_labels"])
            offset_s += response_length(example["labels"])
        return cls.from_groups(groups)


def split_groups(
    groups: GroupRows, teacher_lengths: Sequence[int], student_lengths: Sequence[int]
) -> list[list[list[int]]]:
    """``GroupRows.of_batch`` undone: each example's groups ``[t0, t1, s0, s1]``, counted from its first response
    token, given each example's response lengths (EOS included) on both sides."""
    columns = (groups.teacher_start, groups.teacher_end, groups.student_start, groups.student_end)
    rows = list(zip(*(column.tolist() for column in columns)))
    out: list[list[list[int]]] = [[] for _ in teacher_lengths]
    ends_t = torch.tensor(teacher_lengths).cumsum(0).tolist()
    starts_t = [end - length for end, length in zip(ends_t, teacher_lengths)]
    starts_s = (torch.tensor(student_lengths).cumsum(0) - torch.tensor(student_lengths)).tolist()
    example = 0
    for t0, t1, s0, s1 in rows:  # row-major: the examples' groups in order
        while t0 >= ends_t[example]:
            example += 1
        offset_t, offset_s = starts_t[example], starts_s[example]
        out[example].append([t0 - offset_t, t1 - offset_t, s0 - offset_s, s1 - offset_s])
    return out


def require_offsets(tokenizer: PreTrainedTokenizerBase, side: str) -> None:
    """One clear error for a tokenizer that cannot give offsets (no fast backend): no positional fallback."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"the {side} tokenizer ({type(tokenizer).__name__}) has no fast backend, so it gives no byte offsets; "
            "cross-tokenizer alignment needs them (load it with use_fast=True, or convert it to a tokenizers "
            "tokenizer.json)"
        )


def byte_positions(text: str) -> list[int]:
    """``positions[c]``: the UTF-8 byte position of character ``c`` of ``text`` (one more entry: its end)."""
    positions = [0]
    for char in text:
        positions.append(positions[-1] + len(char.encode("utf-8")))
    return positions


def tokenize_with_spans(tokenizer: PreTrainedTokenizerBase, text: str) -> Tokenized:
    """The tokens of ``text`` (no special tokens) with their UTF-8 byte spans."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    byte_at = byte_positions(text)
    spans = [(byte_at[start], byte_at[end]) for start, end in encoded["offset_mapping"]]
    ids = list(encoded["input_ids"])
    return Tokenized(ids, tokenizer.convert_ids_to_tokens(ids), spans)


def cuts(spans: Sequence[tuple[int, int]]) -> dict[int, int]:
    """Byte position → the number of tokens before it, at every position where the tokenization can be cut (see
    the module docstring); the start (0) and the end are cuts."""
    positions = {0: 0}
    reached = 0  # the furthest end of the tokens so far
    for index, (start, end) in enumerate(spans):
        if index > 0 and start >= reached:
            positions.setdefault(reached, index)  # a zero-width token joins the group after it
        reached = max(reached, end)
    if spans:
        positions[reached] = len(spans)
    return positions


def align_tokens(teacher: Tokenized, student: Tokenized) -> Alignment:
    """The groups of two tokenizations of the same text (see the module docstring)."""
    teacher_cuts, student_cuts = cuts(teacher.spans), cuts(student.spans)
    shared = sorted(set(teacher_cuts) & set(student_cuts))
    groups: list[tuple[Span, Span]] = []
    for before, after in zip(shared, shared[1:]):
        t = (teacher_cuts[before], teacher_cuts[after])
        s = (student_cuts[before], student_cuts[after])
        if t[0] == t[1] or s[0] == s[1]:
            continue  # text one side has no token for (cannot happen for the same string; kept safe)
        same = t[1] - t[0] == s[1] - s[0] and all(
            teacher.tokens[t[0] + k] == student.tokens[s[0] + k] and teacher.spans[t[0] + k] == student.spans[s[0] + k]
            for k in range(t[1] - t[0])
        )
        if same and t[1] - t[0] > 1:
            groups += [((t[0] + k, t[0] + k + 1), (s[0] + k, s[0] + k + 1)) for k in range(t[1] - t[0])]
        else:
            groups.append((t, s))
    return Alignment(groups)


def response_alignment(
    teacher_tokenizer: PreTrainedTokenizerBase,
    student_tokenizer: PreTrainedTokenizerBase,
    response: str,
    teacher_kept: int,
    student_kept: int,
) -> Alignment:
    """The groups of one example's response tokens, counted from each side's first response token.

    ``*_kept``: how many response tokens each side kept after truncation, its EOS included when it was kept (a
    side keeps its EOS exactly when it kept every token of the response). Groups beyond either side's kept tokens
    are dropped; the EOS pair is the last group when both sides kept their EOS.
    """
    require_offsets(teacher_tokenizer, "teacher")
    require_offsets(student_tokenizer, "student")
    teacher = tokenize_with_spans(teacher_tokenizer, response)
    student = tokenize_with_spans(student_tokenizer, response)
    for side, tokenized, kept in (("teacher", teacher, teacher_kept), ("student", student, student_kept)):
        if kept > len(tokenized.ids) + 1:
            raise ValueError(f"{side}: {kept} response tokens kept, but the response has {len(tokenized.ids)} + EOS")
    alignment = align_tokens(teacher, student)
    groups = [(t, s) for t, s in alignment.groups if t[1] <= teacher_kept and s[1] <= student_kept]  # a prefix
    if teacher_kept > len(teacher.ids) and student_kept > len(student.ids):  # both kept their EOS
        groups.append(((len(teacher.ids), len(teacher.ids) + 1), (len(student.ids), len(student.ids) + 1)))
    return Alignment(groups)


def encode_pair_example(
    teacher: "Rendering", student: "Rendering", record: dict[str, Any], max_length: int
) -> dict[str, Any]:
    """One example for a cross-tokenizer pair: the student's ``input_ids``/``labels``/``prompt_length`` (its
    rendering's ``encode``), the teacher's as ``teacher_input_ids``/``teacher_labels``/``teacher_prompt_length``
    (each side its own prompt format, template and truncation), and ``groups``: ``[teacher start, teacher end,
    student start, student end]`` per group, indices into each side's response tokens (end tokens included).
    Dropped on either side: dropped."""
    if teacher.name != student.name:
        raise ConfigError(f"a cross-tokenizer pair renders both sides alike, got {teacher.name} and {student.name}")
    if student.name == "dolly":
        student_side, teacher_side = student.encode(record, max_length), teacher.encode(record, max_length)
        groups = None
    else:
        require_offsets(teacher.tokenizer, "teacher")
        require_offsets(student.tokenizer, "student")
        student_side, student_turns = student.encode_turns(record, max_length, with_turns=True)
        teacher_side, teacher_turns = teacher.encode_turns(record, max_length, with_turns=True)
        groups = turn_groups(teacher_turns, student_turns)
    if student_side["dropped"] or teacher_side["dropped"]:
        return {**student_side, "dropped": True, "teacher_input_ids": [], "teacher_labels": [],
                "teacher_prompt_length": 0, "groups": []}  # fmt: skip
    if groups is None:
        kept_s, kept_t = response_length(student_side["labels"]), response_length(teacher_side["labels"])
        output = student.fields(record)[2]
        groups = response_alignment(teacher.tokenizer, student.tokenizer, output, kept_t, kept_s).groups
    return {
        **student_side,
        "truncated": student_side["truncated"] or teacher_side["truncated"],
        "shortened": student_side["shortened"] or teacher_side["shortened"],
        "teacher_input_ids": teacher_side["input_ids"],
        "teacher_labels": teacher_side["labels"],
        "teacher_prompt_length": teacher_side["prompt_length"],
        "groups": [[t0, t1, s0, s1] for (t0, t1), (s0, s1) in groups],
    }


def turn_groups(teacher: Sequence[Any], student: Sequence[Any]) -> list[tuple[Span, Span]]:
    """The groups of two chat encodings' supervised replies (``lit_kd.data.chat_template.TurnTokens``), as rows of
    each side's response rows: each reply both sides kept is aligned over its content's tokens, then its end-of-turn
    tokens are one group when both kept them."""
    by_turn = {turn.turn: turn for turn in student}
    groups: list[tuple[Span, Span]] = []
    for t in teacher:
        s = by_turn.get(t.turn)
        if s is None:
            continue
        content = align_tokens(Tokenized(t.ids, t.tokens, t.spans), Tokenized(s.ids, s.tokens, s.spans))
        groups += [((t0 + t.first_row, t1 + t.first_row), (s0 + s.first_row, s1 + s.first_row))
                   for (t0, t1), (s0, s1) in content.groups]  # fmt: skip
        if t.end_row is not None and s.end_row is not None:
            groups.append(((t.end_row, t.end_row + 1), (s.end_row, s.end_row + 1)))
    return groups


def encode_pair_response(
    teacher: "Rendering", student: "Rendering", text: str, ended: bool, teacher_room: int, student_room: int
) -> tuple[list[int], list[int], list[list[int]]]:
    """A response given as text (a student's sample, decoded) encoded for both sides after their prompts: (student
    response ids, teacher response ids, groups). Each side tokenizes the text (no special tokens), appends the
    token its replies end with (``end_id``: EOS, or its template's end-of-turn token) when the sample ``ended`` with
    one, and keeps at most its ``*_room`` tokens (at least one: an empty response is that end token)."""
    sides = []
    for rendering, room in ((teacher, teacher_room), (student, student_room)):
        ids = head_tokens(rendering.tokenizer, text, max(room, 1)) + ([rendering.end_id] if ended or not text else [])
        sides.append(ids[: max(room, 1)])
    teacher_ids, student_ids = sides
    alignment = response_alignment(teacher.tokenizer, student.tokenizer, text, len(teacher_ids), len(student_ids))
    return student_ids, teacher_ids, [[t0, t1, s0, s1] for (t0, t1), (s0, s1) in alignment.groups]

