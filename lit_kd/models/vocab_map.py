"""A map between two vocabularies: the teacher and student tokens that spell the same bytes.

Each real entry of a vocabulary (``len(tokenizer)`` of them; rows a head is padded with are not entries) is turned
into the bytes it stands for, after normalizing the two common markers:

* byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM: a ``ByteLevel`` decoder): every character of the token is one byte
  through GPT-2's byte ↔ unicode table (``Ġ`` is the space byte);
* SentencePiece style (Llama 2, Mistral, Gemma): ``▁`` is a space and ``<0xNN>`` a byte (byte fallback);
* any other scheme: the token's characters as UTF-8 (WordPiece's ``##`` continuation marks are not undone, so
  such a vocabulary matches less than it could).

Teacher and student entries with equal bytes are matched (where several entries of a side spell the same bytes, its
first regular entry, byte-fallback entries last); special tokens are matched only as the pair EOS ↔ EOS. The map is
built once per pair.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_kd.errors import VocabularyMismatchError

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
MIN_MATCHED_SHARE = 0.05
"""Below this share of the teacher's vocabulary matched, a pair is refused: the strings barely overlap."""


@dataclass(frozen=True)
class VocabularyMap:
    """``teacher_ids[k]`` and ``student_ids[k]`` spell the same bytes; ``*_size``: the real vocabularies."""

    teacher_ids: Tensor
    student_ids: Tensor
    teacher_size: int
    student_size: int

    @property
    def matched(self) -> int:
        return int(self.teacher_ids.numel())

    @property
    def matched_share(self) -> float:
        """Matched entries / the teacher's real vocabulary."""
        return self.matched / self.teacher_size if self.teacher_size else 0.0

    def to(self, device: torch.device | str) -> "VocabularyMap":
        """The map with its id tensors on ``device`` (itself when they are there already)."""
        if self.teacher_ids.device == torch.device(device):
            return self
        return VocabularyMap(self.teacher_ids.to(device), self.student_ids.to(device), self.teacher_size,
                             self.student_size)  # fmt: skip

    def describe(self) -> str:
        return (
            f"{self.matched:,} of {self.teacher_size:,} teacher entries ({100 * self.matched_share:.1f}%) matched to "
            f"student entries ({self.student_size:,} in all)"
        )


def decoder_types(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The types of the fast tokenizer's decoder and of the decoders a ``Sequence`` holds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    found: set[str] = set()
    pending = [json.loads(backend.to_str()).get("decoder")]
    while pending:
        decoder = pending.pop()
        if isinstance(decoder, dict):
            found.add(str(decoder.get("type")))
            pending.extend(decoder.get("decoders") or [])
    return found


def entries(tokenizer: PreTrainedTokenizerBase) -> list[Optional[str]]:
    """The token string of every real entry, by id."""
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def token_bytes(tokenizer: PreTrainedTokenizerBase, tokens: Optional[list] = None) -> list[Optional[bytes]]:
    """The bytes of every real entry (see the module docstring; ``tokens``: its ``entries`` when already read); None
    for special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_level = "ByteLevel" in decoder_types(tokenizer)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    tokens = entries(tokenizer) if tokens is None else tokens
    spelled: list[Optional[bytes]] = []
    for index, token in enumerate(tokens):
        if index in special or token is None:
            spelled.append(None)
        elif byte_level and all(char in byte_of for char in token):
            spelled.append(bytes(byte_of[char] for char in token))
        elif (fallback := BYTE_FALLBACK.match(token)) is not None:
            spelled.append(bytes([int(fallback.group(1), 16)]))
        elif byte_level:  # an added token outside the byte table: its text
            spelled.append(tokenizer.convert_tokens_to_string([token]).encode("utf-8"))
        else:
            spelled.append(token.replace("▁", " ").encode("utf-8"))
    return spelled


def matchable_entries(tokenizer: PreTrainedTokenizerBase) -> list[tuple[int, bytes]]:
    """(id, bytes) of the entries matching considers, regular entries before ``<0xNN>`` byte-fallback ones, so a
    character's own token wins over its byte spelling (Llama 2 and Mistral number their byte tokens first)."""
    tokens = entries(tokenizer)
    spelled = [(index, value) for index, value in enumerate(token_bytes(tokenizer, tokens)) if value is not None]
    return sorted(spelled, key=lambda entry: BYTE_FALLBACK.match(tokens[entry[0]] or "") is not None)


def build_vocabulary_map(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase, min_share: float = MIN_MATCHED_SHARE
) -> VocabularyMap:
    """Match the two vocabularies by the bytes of their entries; a pair whose entries barely overlap (less than
    ``min_share`` of the teacher's) is one error naming the share."""
    student_index: dict[bytes, int] = {}
    for index, spelled in matchable_entries(student):
        student_index.setdefault(spelled, index)
    pairs: dict[int, int] = {}
    if teacher.eos_token_id is not None and student.eos_token_id is not None:
        pairs[teacher.eos_token_id] = student.eos_token_id
    taken = set(pairs.values())
    for index, spelled in matchable_entries(teacher):
        match = student_index.get(spelled)
        if match is not None and match not in taken and index not in pairs:
            pairs[index] = match
            taken.add(match)
    vocabulary = VocabularyMap(
        torch.tensor(list(pairs), dtype=torch.long),
        torch.tensor(list(pairs.values()), dtype=torch.long),
        len(teacher),
        len(student),
    )
    if vocabulary.matched_share < min_share:
        raise VocabularyMismatchError(
            f"the teacher and student tokenizers share almost no token strings: {vocabulary.describe()}, below the "
            f"{100 * min_share:.0f}% a cross-tokenizer pair needs"
        )
    return vocabulary
