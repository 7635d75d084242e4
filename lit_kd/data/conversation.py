"""Conversations: the chat layouts of a data row, and every record seen as a list of messages.

Two chat layouts are read (``lit_kd.data.records`` detects them from a source's first row):

* ``messages: [{role, content}, ...]``: the OpenAI / Hugging Face chat format (UltraChat, Tulu 3, ...); roles
  ``system``, ``user``, ``assistant``;
* ShareGPT / FastChat ``conversations: [{from, value}, ...]``; ``from`` is ``human`` (or ``user``), ``gpt`` (or
  ``assistant``) or ``system``.

A conversation record is ``{"messages": [{"role", "content"}, ...], "output": <its last assistant turn's
content>}`` (+ ``category`` when the row has one): ``output`` is the reference that ROUGE-L and the teacher's
sampling (``generate-data``) read, as a Dolly record's response is.

What a conversation must be, else one ``DataFormatError`` naming the file and line (refused, never dropped in
silence): a non-empty list of objects with a known role and string content; at most one system turn, first;
then a user turn first; at least one assistant turn, and the last turn an assistant's (its reply is what is
learned and sampled); no assistant turn with empty content (a teacher-generated file, ``generated_by``, may end
with an empty reply: the teacher stopped at once).

A Dolly record (instruction, input, output) is the conversation of one user turn (the instruction, then a blank
line and the input when there is one) and one assistant turn (the output): how ``data.prompt_format
chat_template`` renders it.
"""

from __future__ import annotations

from typing import Any, Optional

from lit_kd.errors import DataFormatError

ROLES = ("system", "user", "assistant")

CHAT_LAYOUTS = {
    # field: (layout name, role key, content key, role names → roles)
    "messages": ("chat messages (messages: [{role, content}])", "role", "content",
                 {"system": "system", "user": "user", "assistant": "assistant"}),
    "conversations": ("ShareGPT (conversations: [{from, value}])", "from", "value",
                      {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                       "assistant": "assistant"}),
}  # fmt: skip


def chat_layout_field(row: dict[str, Any]) -> Optional[str]:
    """The chat field of a row (``messages`` or ``conversations``), or None for an instruction row."""
    return next((name for name in CHAT_LAYOUTS if name in row), None)


def conversation_record(row: dict[str, Any], field: str, where: str) -> dict[str, Any]:
    """A chat row as ``{"messages", "output"[, "category"]}``, checked (see the module docstring)."""
    layout, role_key, content_key, role_names = CHAT_LAYOUTS[field]
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise DataFormatError(f"{where}: field {field!r} must be a non-empty list of turns ({layout})")
    generated = isinstance(row.get("generated_by"), dict)
    messages = []
    for index, turn in enumerate(turns):
        at = f"{where}: {field}[{index}]"
        if not isinstance(turn, dict):
            raise DataFormatError(f"{at} must be an object with {role_key!r} and {content_key!r}")
        name, content = turn.get(role_key), turn.get(content_key)
        if name not in role_names:
            raise DataFormatError(f"{at}: unknown role {name!r} (accepted: {', '.join(role_names)})")
        if not isinstance(content, str):
            raise DataFormatError(f"{at}: {content_key!r} must be a string, got {type(content).__name__}")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataFormatError(f"{at}: not valid Unicode text ({err.reason} at character {err.start})") from None
        messages.append({"role": role_names[name], "content": content})
    check_conversation(messages, where, allow_empty_last=generated)
    record: dict[str, Any] = {"messages": messages, "output": messages[-1]["content"]}
    category = row.get("category", row.get("topic"))
    if isinstance(category, str):
        record["category"] = category
    return record


def check_conversation(messages: list[dict[str, str]], where: str, allow_empty_last: bool = False) -> None:
    """The rules of the module docstring, one error naming the first turn that breaks them."""
    roles = [message["role"] for message in messages]
    first = 1 if roles[0] == "system" else 0
    if "system" in roles[first:]:
        raise DataFormatError(f"{where}: turn {roles.index('system', first)} is a system turn; only the first may be")
    if first == len(roles) or roles[first] != "user":
        raise DataFormatError(f"{where}: the conversation must open with a user turn (after any system turn)")
    if roles[-1] != "assistant":
        what = "has no assistant turn" if "assistant" not in roles else "ends with a turn after its last assistant turn"
        raise DataFormatError(f"{where}: the conversation {what}; its last turn must be the assistant's reply")
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        if message["role"] == "assistant" and not message["content"].strip() and not (last and allow_empty_last):
            raise DataFormatError(f"{where}: assistant turn {index} is empty")


def check_single_exchange(messages: list[dict[str, str]], where: str) -> None:
    """The Dolly template renders one user turn and one reply: any other conversation is one error saying so."""
    roles = [message["role"] for message in messages]
    if roles != ["user", "assistant"]:
        raise DataFormatError(
            f"{where}: a conversation of {len(roles)} turns ({', '.join(roles)}), which the Dolly template cannot "
            "render (one user turn and one reply); set data.prompt_format chat_template (each model's own template)"
        )


def is_conversation(record: dict[str, Any]) -> bool:
    return "messages" in record


def user_content(instruction: str, input: str = "") -> str:
    """A Dolly record's user turn: the instruction, then a blank line and the input (context) when there is one."""
    return f"{instruction}\n\n{input}" if input else instruction


def messages_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """Any record as a conversation: its own messages, or a Dolly record's user turn and (when it has a response;
    the first reference of several) its assistant turn."""
    if is_conversation(record):
        return record["messages"]
    messages = [{"role": "user", "content": user_content(record["instruction"], record.get("input", ""))}]
    output = record.get("output")
    output = output[0] if isinstance(output, list) else output
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The turns before the reply that is sampled or scored: everything before the last assistant turn."""
    messages = messages_of(record)
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


def with_response(record: dict[str, Any], response: str) -> dict[str, Any]:
    """The record with ``response`` as its reply (its last assistant turn, or a Dolly record's output)."""
    if not is_conversation(record):
        return {**record, "output": response}
    messages = prompt_messages(record) + [{"role": "assistant", "content": response}]
    return {**record, "messages": messages, "output": response}


def prompt_view(record: dict[str, Any]) -> dict[str, Any]:
    """How results files show a record's prompt: a Dolly record's instruction and input, a conversation's turns
    before its reply."""
    if is_conversation(record):
        return {"messages": prompt_messages(record)}
    return {"instruction": record["instruction"], "input": record.get("input", "")}
