"""The ``chat_template`` rendering: a conversation through the tokenizer's own chat template, the loss on the
assistant's tokens only.

How a conversation becomes a training sequence (``ChatRendering.encode``):

1. **Render and tokenize whole.** ``tokenizer.apply_chat_template`` renders the conversation to text, which is
   tokenized in one piece with the fast tokenizer's character offsets and no special tokens added: the template
   writes its own BOS (a BOS is never doubled), as ``apply_chat_template(tokenize=True)`` does. A template without
   a system role (one that raises on it, as Mistral's ``[INST]`` templates do, or drops it) gets the system turn
   merged into the first user turn: its content, a blank line, the user's content.
2. **Locate each reply.** An assistant turn starts where the turns before it, rendered with the generation prompt,
   end, and ends where the turns through it, rendered, end: both renders must be prefixes of the whole text (a
   template that renders a conversation's first turns differently on their own is one error: neither a reply's
   start nor a generation prompt would be defined). The reply's content is found in that stretch, verbatim or
   stripped (templates that trim it).
3. **Supervise.** The tokens from the content's first character through the end-of-turn token the template writes
   after it (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...: the first special token after a reply, found once per
   tokenizer from a probe conversation; a template that writes none is refused) are labelled, nothing else: not
   the system or user turns, not the assistant header, not what follows the end-of-turn token. Every assistant
   turn, or the last one only (``supervised_turns: last``). A token that begins before the content is supervised
   when what it holds before it is whitespace (SentencePiece's ``▁``); one that holds template text there is one
   error, so a supervised span never starts inside the template.
4. **End.** The sequence stops after the last reply's end-of-turn token: what a template writes after it (ChatML's
   newline) teaches nothing.

**Truncation** (``max_length``): a conversation too long loses its earliest whole exchanges — a user turn and
the replies up to the next user turn — keeping any system turn, until it fits or only its last exchange is left
(``shortened``); past that, the end of its last reply is cut, its end-of-turn token with it (``truncated``). One
whose prompt alone leaves no room for a reply token is dropped.

**What is exact.** The token ids are those of tokenizing the whole rendered text (what a model fine-tuned on its
template saw), and each supervised span's characters are its reply's content through the end-of-turn token,
checked from the offsets for every turn (the tests decode them too, for four template families, and compare with
``return_assistant_tokens_mask`` on a template with ``{% generation %}`` markers, which this does not need). What
is not: a generation prompt is tokenized on its own (``prompt_ids``), which equals the training tokens before the
reply unless the tokenizer merges across the prompt's end (no common template: they end with a newline or a
special token). The work per conversation grows with its length (it is rendered and tokenized whole, and again
for each exchange tried when it is too long: a binary search).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

from transformers import PreTrainedTokenizerBase

from lit_kd.data.alignment import byte_positions
from lit_kd.data.conversation import messages_of, prompt_messages
from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import ConfigError, DataFormatError

FORMAT_VERSION = "1"  # bump when the encoding rules change: tokenization and teacher caches are keyed by it
SYSTEM_PROBE = "lit_kd system probe"
REPLY_PROBE = "lit_kd reply probe"


@dataclass(frozen=True)
class TurnTokens:
    """One supervised reply of an encoded conversation, for aligning two tokenizations (cross-tokenizer pairs)."""

    turn: int
    """Its place among the conversation's assistant turns (0: the first), earlier exchanges dropped or not."""
    first_row: int
    """How many supervised tokens of the sequence come before it: its first row among the response rows."""
    ids: list[int]
    """The kept tokens that spell its content."""
    tokens: list[str]
    spans: list[tuple[int, int]]
    """Each token's UTF-8 byte span within the content (clipped to it)."""
    end_row: Optional[int]
    """The row of its end-of-turn token, None when truncation cut it."""


@dataclass(frozen=True)
class Reply:
    """Where one reply lies in a rendered conversation: tokens ``[first, content_end)`` spell its content
    (characters ``[start, stop)``), token ``end`` is its end-of-turn token."""

    turn: int
    first: int
    content_end: int
    end: int
    start: int
    stop: int


@dataclass
class Layout:
    """A rendered, tokenized conversation: ids through the last reply's end-of-turn token, its supervised replies."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    replies: list[Reply]

    @property
    def prompt_length(self) -> int:
        return self.replies[-1].first


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids of the tokenizer's special tokens: the named ones and every added token marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {index for index, token in added.items() if token.special}


class ChatRendering:
    """``data.prompt_format: chat_template`` for one tokenizer (see the module docstring). ``role`` names the
    tokenizer in errors (``the teacher's``)."""

    name = "chat_template"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, supervised_turns: str = "all", role: str = "the") -> None:
        if supervised_turns not in ("all", "last"):
            raise ConfigError(f"data.supervised_turns must be all or last, got {supervised_turns!r}")
        self.tokenizer, self.supervised_turns, self.role = tokenizer, supervised_turns, role
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ConfigError(
                f"data.prompt_format chat_template: {role} tokenizer ({type(tokenizer).__name__}, "
                f"{tokenizer.name_or_path or 'built in memory'}) has no chat template; use data.prompt_format dolly, "
                "or a tokenizer that has one (its tokenizer_config.json's chat_template)"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"data.prompt_format chat_template: {role} tokenizer ({type(tokenizer).__name__}) has no fast backend, "
                "so it gives no character offsets, which locate the assistant's tokens; load it with use_fast=True"
            )
        self.template = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
        self.merges_system = not self.renders_system()
        self.end_of_turn = self.find_end_of_turn()

    def for_turns(self, supervised_turns: str) -> "ChatRendering":
        """The same rendering supervising ``all`` replies or the ``last`` one."""
        if supervised_turns == self.supervised_turns:
            return self
        return ChatRendering(self.tokenizer, supervised_turns, self.role)

    @property
    def stop_ids(self) -> list[int]:
        """Generation stops at the template's end-of-turn token and at EOS."""
        return sorted({self.end_of_turn, self.tokenizer.eos_token_id})

    @property
    def end_id(self) -> int:
        """The token a reply ends with: the template's end-of-turn token."""
        return self.end_of_turn

    @property
    def fingerprint(self) -> str:
        """What the encoding depends on beyond the tokenizer: the template and these rules."""
        parts = [FORMAT_VERSION, self.template, self.supervised_turns, str(self.merges_system), str(self.end_of_turn)]
        return "chat-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.role} tokenizer's chat template"

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        """The template's text of ``messages``; a system turn merged into the first user turn where the template
        has no system role (here, so that truncation keeps the system turn apart from the exchanges it drops)."""
        if self.merges_system and messages[0]["role"] == "system" and len(messages) > 1:
            system, user, *rest = messages
            messages = [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}, *rest]
        return self.apply(messages, generation_prompt)

    def apply(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as err:  # jinja2's TemplateError, the template's own raise_exception, a missing key
            raise DataFormatError(f"{self.describe()} cannot render this conversation: {err}") from None
        if not isinstance(text, str):
            raise DataFormatError(f"{self.describe()} rendered {type(text).__name__}, not text")
        return text

    def renders_system(self) -> bool:
        """Whether the template renders a system turn (else: merged into the first user turn)."""
        probe = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "Hi"}]
        try:
            return SYSTEM_PROBE in self.apply(probe, generation_prompt=True)
        except DataFormatError:
            return False

    def find_end_of_turn(self) -> int:
        """The first special token the template writes after an assistant reply."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": REPLY_PROBE}]
        try:
            text = self.render(probe)
        except DataFormatError as err:
            raise ConfigError(f"data.prompt_format chat_template: {err}") from None
        at = text.rfind(REPLY_PROBE)
        if at < 0:
            raise ConfigError(f"{self.describe()} does not write an assistant turn's content: {text[:200]!r}")
        tail = text[at + len(REPLY_PROBE) :]
        special = special_token_ids(self.tokenizer)
        found = [i for i in self.tokenizer(tail, add_special_tokens=False)["input_ids"] if i in special]
        if not found:
            raise ConfigError(
                f"{self.describe()} ends an assistant turn with {tail!r}, which holds no special token: lit_kd "
                "supervises a reply through its end-of-turn token and stops generation there; use a template whose "
                "turns end with one (<|im_end|>, <|eot_id|>, </s>, ...) or data.prompt_format dolly"
            )
        return found[0]

    def prompt_ids(self, record: dict[str, Any]) -> list[int]:
        """The tokens that prompt the record's reply: the turns before it, with the generation prompt."""
        prompt = self.render(prompt_messages(record), generation_prompt=True)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def layout(self, messages: list[dict[str, str]], first_turn: int = 0) -> Layout:
        """Render and tokenize ``messages``; locate its supervised replies (``first_turn``: the ordinal of its first
        assistant turn in the whole conversation)."""
        text = self.render(messages)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
        starts, ends = [o[0] for o in offsets], [o[1] for o in offsets]
        assistant = [k for k, message in enumerate(messages) if message["role"] == "assistant"]
        supervised = assistant if self.supervised_turns == "all" else assistant[-1:]
        replies = []
        for k in supervised:
            turn = first_turn + assistant.index(k)
            begin = self.prefix_length(text, messages[:k], True, turn)
            finish = self.prefix_length(text, messages[: k + 1], False, turn)
            content = messages[k]["content"]
            start = text.find(content, begin, finish)
            if start < 0 and content.strip():
                content = content.strip()
                start = text.find(content, begin, finish)
            if start < 0:
                raise DataFormatError(f"{self.describe()} changes the content of assistant turn {turn} when it "
                                      "renders it (not found verbatim or stripped)")  # fmt: skip
            stop = start + len(content)
            first = bisect.bisect_right(ends, start)  # the first token that ends after the content starts
            if first < len(ids) and starts[first] < start and text[starts[first] : start].strip():
                raise DataFormatError(
                    f"{self.describe()}: the tokenizer merges assistant turn {turn}'s first characters with the "
                    f"template's text before them ({text[starts[first] : start + 1]!r}), so its supervised tokens "
                    "would start inside the template"
                )
            content_end = max(bisect.bisect_left(starts, stop), first)
            end = next((i for i in range(content_end, len(ids)) if starts[i] >= finish or ids[i] == self.end_of_turn),
                       len(ids))  # fmt: skip
            if end == len(ids) or ids[end] != self.end_of_turn:
                raise DataFormatError(f"{self.describe()} writes no end-of-turn token "
                                      f"({self.tokenizer.convert_ids_to_tokens(self.end_of_turn)}) after assistant "
                                      f"turn {turn}")  # fmt: skip
            replies.append(Reply(turn, first, content_end, end, start, stop))
        return Layout(text, ids[: replies[-1].end + 1], offsets, replies)

    def prefix_length(self, text: str, messages: list[dict[str, str]], generation_prompt: bool, turn: int) -> int:
        prefix = self.render(messages, generation_prompt)
        if not text.startswith(prefix):
            where = "start" if generation_prompt else "end"
            raise DataFormatError(
                f"{self.describe()} renders the turns before the {where} of assistant turn {turn} differently on "
                "their own than within the whole conversation, so the reply's place cannot be located"
            )
        return len(prefix)

    def fitted_layout(self, messages: list[dict[str, str]], max_length: int) -> tuple[Layout, bool]:
        """The layout of ``messages`` without its earliest exchanges, as few dropped as fit ``max_length`` (binary
        search: fewer tokens with every exchange dropped); (layout, whether any was dropped)."""
        head = 1 if messages[0]["role"] == "system" else 0
        last_user = max(k for k, m in enumerate(messages[:-1]) if m["role"] == "user")
        cuts = [k for k in range(head, last_user + 1) if messages[k]["role"] == "user"]  # exchanges start there

        def layout_from(index: int) -> Layout:
            kept_from = cuts[index]
            dropped = sum(m["role"] == "assistant" for m in messages[head:kept_from])
            return self.layout(messages[:head] + messages[kept_from:], first_turn=dropped)

        low, high = 0, len(cuts) - 1
        best = layout_from(0)
        if len(best.ids) <= max_length or high == 0:
            return best, False
        best = layout_from(high)  # the last exchange alone: the shortest there is
        if len(best.ids) > max_length:
            return best, True  # its reply is cut
        while low < high - 1:  # invariant: from cuts[low] it does not fit, from cuts[high] it does (best)
            middle = (low + high) // 2
            candidate = layout_from(middle)
            if len(candidate.ids) <= max_length:
                best, high = candidate, middle
            else:
                low = middle
        return best, True

    def encode(self, record: dict[str, Any], max_length: int) -> dict[str, Any]:
        """``input_ids``, ``labels`` (−100 off the supervised replies), ``prompt_length`` (where the last reply
        starts: generation's prompt), and the flags ``truncated``, ``shortened``, ``dropped`` (dropped: empty ids)."""
        return self.encode_turns(record, max_length)[0]

    def encode_turns(
        self, record: dict[str, Any], max_length: int, with_turns: bool = False
    ) -> tuple[dict[str, Any], list[TurnTokens]]:
        """``encode`` and, ``with_turns``, the supervised replies' tokens (``TurnTokens``) for alignment."""
        layout, shortened = self.fitted_layout(messages_of(record), max_length)
        if layout.prompt_length >= max_length:
            return {"input_ids": [], "labels": [], "prompt_length": 0, "truncated": False, "shortened": shortened,
                    "dropped": True}, []  # fmt: skip
        ids = layout.ids[:max_length]
        labels = [IGNORE_INDEX] * len(ids)
        turns, row = [], 0
        for reply in layout.replies:
            kept = min(reply.end + 1, len(ids))
            labels[reply.first : kept] = ids[reply.first : kept]
            if with_turns and reply.first < kept:
                turns.append(self.turn_tokens(layout, reply, kept, row))
            row += max(kept - reply.first, 0)
        encoded = {"input_ids": ids, "labels": labels, "prompt_length": layout.prompt_length,
                   "truncated": len(layout.ids) > max_length, "shortened": shortened, "dropped": False}  # fmt: skip
        return encoded, turns

    def turn_tokens(self, layout: Layout, reply: Reply, kept: int, first_row: int) -> TurnTokens:
        byte_at = byte_positions(layout.text[reply.start : reply.stop])
        indices = range(reply.first, min(reply.content_end, kept))
        spans = []
        for i in indices:
            start, end = layout.offsets[i]
            spans.append((byte_at[max(start, reply.start) - reply.start], byte_at[min(end, reply.stop) - reply.start]))
        ids = [layout.ids[i] for i in indices]
        end_row = first_row + reply.end - reply.first if reply.end < kept else None
        return TurnTokens(reply.turn, first_row, ids, self.tokenizer.convert_ids_to_tokens(ids), spans, end_row)
