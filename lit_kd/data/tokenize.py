"""Turning one record into a supervised token sequence (the Dolly template's ``encode_example``), and the content
hashes that key the caches; ``lit_kd.data.tokenized`` tokenizes whole splits into the ``datasets`` Arrow cache.

Under the Dolly template (``encode_example``; ``lit_kd.data.rendering`` chooses the prompt format): sequence =
prompt tokens + response tokens + EOS. Labels are ``-100`` on the prompt (and on padding, added later by the
collator), so only the response and its EOS are supervised. Truncation rule (``max_length`` tokens in all): the
prompt is kept whole and the response (with its EOS) is cut from the right to fit. An example whose prompt alone
leaves no room for a single response token is dropped. Under a chat template see ``lit_kd.data.chat_template``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_kd.data.prompt import format_prompt

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
