"""Turning records into supervised token sequences, cached with the ``datasets`` Arrow cache.

Under the Dolly template (``encode_example``; ``lit_kd.data.rendering`` chooses the prompt format): sequence =
prompt tokens + response tokens + EOS. Labels are ``-100`` on the prompt (and on padding, added later by the
collator), so only the response and its EOS are supervised. Truncation rule (``max_length`` tokens in all): the
prompt is kept whole and the response (with its EOS) is cut from the right to fit. An example whose prompt alone
leaves no room for a single response token is dropped. Under a chat template see ``lit_kd.data.chat_template``.
Truncated, shortened (conversations that lost earlier turns) and dropped examples are counted (``TokenizedSplit``)
and reported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_kd.data.prompt import format_prompt

if TYPE_CHECKING:
    from lit_kd.data.rendering import Rendering

IGNORE_INDEX = -100
"""The label of a position that is not supervised (prompt and padding)."""


def response_mask(labels: Tensor) -> Tensor:
    """``[B, T-1]``: the positions whose next token is a response token (position t predicts token t + 1)."""
    return labels[:, 1:] != IGNORE_INDEX


def response_length(labels: Sequence[int]) -> int:
    """How many tokens of an encoded example are supervised: its response, EOS included."""
    return sum(label != IGNORE_INDEX for label in labels)


def prompt_end(labels: Tensor) -> int:
    """Where a row's prompt ends: the index of its first supervised label."""
    return int((labels != IGNORE_INDEX).nonzero()[0])

CACHE_FORMAT = "4"  # bump whenever the encoding or the cached columns change: old cache entries are then unused


HEAD_MARGIN = 32
"""Tokens beyond the kept ones that a prefix must yield before its tokenization is trusted (see ``head_tokens``)."""


def head_tokens(
    tokenizer: PreTrainedTokenizerBase, text: str, count: int, add_special_tokens: bool = False
) -> list[int]:
    """The first ``count + 1`` tokens of ``text`` at most (one more than asked tells whether it is longer),
    equal to those of tokenizing it in full, with work bounded by ``count`` rather than by the text's length.

    Growing prefixes (16 characters per wanted token, then ×4) are cut at a whitespace and tokenized until one
    yields ``HEAD_MARGIN`` tokens more than wanted: the wanted tokens then lie far from the cut, where a
    tokenizer's merges cannot see it. A 50 MB response costs the same as a few thousand characters."""
    chars = 16 * (count + HEAD_MARGIN)
    while chars < len(text):
        cut = text.rfind(" ", chars // 2, chars)
        ids = tokenizer(text[: cut if cut > 0 else chars], add_special_tokens=add_special_tokens)["input_ids"]
        if len(ids) > count + HEAD_MARGIN:
            return ids[: count + 1]
        chars *= 4
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"][: count + 1]


def encode_example(
    tokenizer: PreTrainedTokenizerBase, instruction: str, input: str, output: str, max_length: int
) -> dict[str, Any]:
    """``input_ids``/``labels`` of one example, with ``truncated``/``dropped`` flags (dropped: empty ids).
    The work per example is bounded by ``max_length`` (``head_tokens``), however long its texts are."""
    prompt_ids = head_tokens(tokenizer, format_prompt(instruction, input), max_length, add_special_tokens=True)
    room = max_length - len(prompt_ids)
    if room < 1:
        return {"input_ids": [], "labels": [], "truncated": False, "dropped": True}
    response_ids = head_tokens(tokenizer, output, room) + [tokenizer.eos_token_id]
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "truncated": truncated,
        "dropped": False,
    }


@dataclass
class TokenizedSplit:
    """A tokenized split (an Arrow-backed ``datasets.Dataset``) and what the truncation rule did to it."""

    dataset: Any
    examples: int
    truncated: int
    dropped: int
    shortened: Optional[int] = None
    """Conversations that lost their earliest turns (counted under a chat template; None: not applicable)."""

    def summary(self, name: str) -> str:
        turns = f", {self.shortened} conversations lost earlier turns" if self.shortened is not None else ""
        return (
            f"{name}: {len(self.dataset)} examples kept of {self.examples} "
            f"({self.truncated} responses truncated{turns}, {self.dropped} dropped: prompt too long)"
        )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A content hash of the tokenizer (its full serialisation for fast tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = f"{tokenizer.eos_token_id}|{tokenizer.bos_token_id}|{type(tokenizer).__name__}"
    return hashlib.sha256((content + extra).encode()).hexdigest()


def records_fingerprint(records: list[dict[str, Any]]) -> str:
    """A content hash of records (instruction, input, output, or a conversation's turns, in order)."""
    content = json.dumps(
        [["messages", r["messages"]] if "messages" in r else [r["instruction"], r["input"], r["output"]]
         for r in records]  # fmt: skip
    )
    return hashlib.sha256(content.encode()).hexdigest()


@dataclass(frozen=True)
class DataFingerprints:
    """Content hashes of a run's tokenizer and of each split's records, computed once per run
    (``DollyDataModule.fingerprints``) for the tokenization cache and the teacher cache's key, with the rendering's
    (``lit_kd.data.rendering``: the prompt format; both sides' for a cross-tokenizer pair)."""

    tokenizer: str
    splits: dict[str, str]
    rendering: str


def default_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "lit_kd_tokenized"


def tokenize_records(
    records: list[dict[str, Any]],
    rendering: "Rendering",
    max_length: int,
    cache_dir: Optional[str] = None,
    desc: str = "Tokenizing",
    fingerprints: Optional[tuple[str, str]] = None,
    teacher_rendering: Optional["Rendering"] = None,
) -> TokenizedSplit:
    """Tokenize records with ``Dataset.map`` through a rendering (``lit_kd.data.rendering``: the prompt format for a
    tokenizer); the result is cached in an Arrow file keyed by the records' content, the tokenizer, the rendering
    and ``max_length``, and reused on the next run. ``fingerprints``: the records' and the tokenizer's hashes when
    already computed. A ``teacher_rendering`` of its own (a cross-tokenizer pair: the teacher's tokenizer and
    template): each example also holds the teacher's tokens and the aligned groups
    (``lit_kd.data.alignment.encode_pair_example``), and the key holds the teacher's side too. An error in a record
    names its place in the split (``desc``, record number)."""
    import datasets

    from lit_kd.data.alignment import encode_pair_example
    from lit_kd.errors import DataFormatError

    tokenizer = rendering.tokenizer
    records_hash, tokenizer_hash = fingerprints or (records_fingerprint(records), tokenizer_fingerprint(tokenizer))
    key = hashlib.sha256()
    for part in (
        CACHE_FORMAT,
        records_hash,
        tokenizer_hash,
        rendering.fingerprint,
        str(max_length),
        *(("pair", tokenizer_fingerprint(teacher_rendering.tokenizer), teacher_rendering.fingerprint)
          if teacher_rendering is not None else ()),  # fmt: skip
    ):
        key.update(part.encode())
    fingerprint = key.hexdigest()[:32]
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)

    def encode(row: dict[str, Any], index: int) -> dict[str, Any]:
        record = json.loads(row["record"])
        try:
            if teacher_rendering is None:
                encoded = rendering.encode(record, max_length)
            else:
                encoded = encode_pair_example(teacher_rendering, rendering, record, max_length)
        except DataFormatError as err:
            raise DataFormatError(f"{desc.removeprefix('Tokenizing ')} split, record {index + 1}: {err}") from None
        return encoded | {"reference": record["output"]}  # the untruncated response (last reply), for ROUGE-L

    table = datasets.Dataset.from_dict({"record": [json.dumps(r, ensure_ascii=False) for r in records]})
    encoded = table.map(
        encode,
        with_indices=True,
        remove_columns=table.column_names,
        cache_file_name=str(directory / f"{fingerprint}.arrow"),
        new_fingerprint=fingerprint,
        desc=desc,
    )
    kept = [i for i, dropped in enumerate(encoded["dropped"]) if not dropped]
    columns = ["input_ids", "labels", "prompt_length", "reference"]
    if teacher_rendering is not None:
        columns += ["teacher_input_ids", "teacher_labels", "teacher_prompt_length", "groups"]
    return TokenizedSplit(
        dataset=encoded.select(kept).with_format(columns=columns),
        examples=len(encoded),
        truncated=sum(encoded["truncated"]),
        dropped=len(encoded) - len(kept),
        shortened=sum(encoded["shortened"]) if rendering.name == "chat_template" else None,
    )
