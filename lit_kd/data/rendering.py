"""How a record becomes the tokens a model reads: the prompt format (``data.prompt_format``), one object per tokenizer
that every place making or reading text goes through — tokenization and its cache, the teacher cache's key,
validation ROUGE-L, ``evaluate``, on- and mixed-policy sampling, ``generate-data`` and cross-tokenizer pairs.

* ``dolly`` (``DollyRendering``, the default, the paper's): MiniLLM's Alpaca-style template (``lit_kd.data.prompt``)
  around one instruction and its response; the response and an EOS are supervised; generation stops at EOS. A
  conversation is rendered so only when it is one user turn and one reply (the others are refused, naming
  ``chat_template``).
* ``chat_template`` (``lit_kd.data.chat_template.ChatRendering``): each model's own chat template; every assistant
  turn's content and end-of-turn token supervised (``data.supervised_turns: last``: the last reply only);
  generation stops at the end-of-turn token or EOS. A Dolly record is one user turn and one reply.

Every rendering gives ``encode(record, max_length)`` (``input_ids``, ``labels``, ``prompt_length``, ``truncated``,
``shortened``, ``dropped``), ``prompt_ids(record)`` (the prompt of the record's reply, for generation),
``stop_ids``, ``end_id`` (the token a reply ends with) and ``fingerprint`` (what the caches are keyed by).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Union

from transformers import PreTrainedTokenizerBase

from lit_kd.data.chat_template import ChatRendering
from lit_kd.data.conversation import check_single_exchange, is_conversation, messages_of
from lit_kd.data.prompt import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, format_prompt
from lit_kd.data.tokenize import encode_example, response_length
from lit_kd.errors import ConfigError

PROMPT_FORMATS = ("dolly", "chat_template")
SUPERVISED_TURNS = ("all", "last")


class DollyRendering:
    """``data.prompt_format: dolly``: MiniLLM's template, one instruction and one response (see the module)."""

    name = "dolly"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def for_turns(self, supervised_turns: str) -> "DollyRendering":
        return self  # one reply: all turns are the last

    @property
    def stop_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    @property
    def end_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def fingerprint(self) -> str:
        """The template's hash (the value teacher caches were always keyed by)."""
        return hashlib.sha256((PROMPT_NO_INPUT + "\0" + PROMPT_WITH_INPUT).encode()).hexdigest()[:16]

    @staticmethod
    def fields(record: dict[str, Any]) -> tuple[str, str, str]:
        """(instruction, input, response) of a Dolly record, or of a one-exchange conversation (the user turn as
        the instruction)."""
        if not is_conversation(record):
            output = record.get("output")
            output = output[0] if isinstance(output, list) else output  # the first of several references
            return record["instruction"], record.get("input", ""), output or ""
        messages = messages_of(record)
        check_single_exchange(messages, "a record")
        return messages[0]["content"], "", messages[1]["content"]

    def encode(self, record: dict[str, Any], max_length: int) -> dict[str, Any]:
        encoded = encode_example(self.tokenizer, *self.fields(record), max_length)
        prompt = len(encoded["labels"]) - response_length(encoded["labels"])
        return encoded | {"prompt_length": prompt if not encoded["dropped"] else 0, "shortened": False}

    def prompt_ids(self, record: dict[str, Any]) -> list[int]:
        instruction, input, _ = self.fields(record)
        return self.tokenizer(format_prompt(instruction, input))["input_ids"]


Rendering = Union[DollyRendering, ChatRendering]


def make_rendering(
    tokenizer: PreTrainedTokenizerBase, prompt_format: str = "dolly", supervised_turns: str = "all", role: str = "the"
) -> Rendering:
    """The rendering of ``prompt_format`` for ``tokenizer`` (``role`` names it in errors: "the teacher's")."""
    if prompt_format == "dolly":
        return DollyRendering(tokenizer)
    if prompt_format == "chat_template":
        return ChatRendering(tokenizer, supervised_turns, role)
    raise ConfigError(f"data.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")


def pair_renderings(
    tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: Optional[PreTrainedTokenizerBase],
    prompt_format: str = "dolly",
    supervised_turns: str = "all",
) -> tuple[Rendering, Optional[Rendering]]:
    """(the rendering of the data's tokenizer; the teacher's own, when a cross-tokenizer pair gives it one)."""
    rendering = make_rendering(tokenizer, prompt_format, supervised_turns)
    if teacher_tokenizer is None:
        return rendering, None
    return rendering, make_rendering(teacher_tokenizer, prompt_format, supervised_turns, "the teacher's")
