"""Reading instruction data: local JSONL / JSONL.gz / JSON / Parquet files or a hub dataset.

These layouts are recognised (from the first row of a source, or a whole JSON file):

* raw databricks-dolly-15k: ``instruction``, ``context``, ``response``, ``category``;
* MiniLLM/DistiLLM processed: ``instruction``, ``input`` (optional), ``output`` (+ ``prompt``, ignored:
  the prompt is always rebuilt from ``lit_kd.data.prompt`` so training and generation share one template);
* Self-Instruct's ``user_oriented_instructions.jsonl``: ``instruction``, ``instances: [{input, output}]`` (one
  record per instance; ``motivation_app`` is its category);
* FastChat's ``question.jsonl``: ``question_id``, ``turns`` (the first turn is the instruction), no responses:
  its records have ``output: None`` and need references from another file (``attach_references``);
* a Super-NaturalInstructions task file (one JSON object): ``Definition`` (the instruction) and ``Instances``
  (``input``, ``output``: a list, several references);
* conversations: ``messages: [{role, content}]`` (OpenAI / Hugging Face chat) or ShareGPT's
  ``conversations: [{from, value}]`` (``lit_kd.data.conversation``).

Every instruction row becomes ``{"instruction", "input", "output"}`` (+ ``category`` when known), every
conversation ``{"messages", "output"}`` (``output``: its last assistant turn). A malformed line, a missing or
non-string field, an empty response, a conversation that breaks the rules of ``lit_kd.data.conversation`` or a row
of no known layout is a ``DataFormatError`` naming the file and line (and the layouts accepted).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from lit_kd.data.conversation import CHAT_LAYOUTS, chat_layout_field, check_single_exchange, conversation_record
from lit_kd.errors import DataFormatError

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


@dataclass(frozen=True)
class Layout:
    """Field names of one row layout."""

    name: str
    input: str
    output: str
    input_required: bool
    chat_field: Optional[str] = None
    """``messages`` or ``conversations`` for a chat layout (``lit_kd.data.conversation``)"""


DOLLY_RAW = Layout("raw Dolly (instruction/context/response)", input="context", output="response", input_required=True)
MINILLM = Layout("MiniLLM (instruction/input/output)", input="input", output="output", input_required=False)
SELF_INSTRUCT = Layout("Self-Instruct (instruction/instances)", input="input", output="output", input_required=False)
FASTCHAT = Layout("FastChat questions (question_id/turns)", input="input", output="output", input_required=False)
CHATS = {field: Layout(spec[0], input="", output="", input_required=False, chat_field=field)
         for field, spec in CHAT_LAYOUTS.items()}  # fmt: skip
SUPER_NI = "a Super-NaturalInstructions task file (Definition/Instances)"
ACCEPTED = (
    f"{DOLLY_RAW.name}, {MINILLM.name}, {', '.join(layout.name for layout in CHATS.values())}, "
    f"{SELF_INSTRUCT.name} rows, {FASTCHAT.name} rows, or {SUPER_NI}"
)


def is_local_source(source: str) -> bool:
    """A source is local when it exists, has a data-file suffix, or is written as a path."""
    return (
        os.path.exists(source)
        or source.lower().endswith(LOCAL_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
    )


def _iter_json_lines(path: Path, lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None


def iter_local_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) pairs of a local file; the location is ``file:line`` (or ``file[row]``)."""
    if not path.is_file():
        raise DataFormatError(f"data file not found: {path}")
    name = path.name.lower()
    if not name.endswith(LOCAL_SUFFIXES):
        kind = path.suffix or "(no extension)"
        raise DataFormatError(
            f"{path}: unsupported data format {kind} (expected {', '.join(LOCAL_SUFFIXES)}, or a hub dataset name)"
        )
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DataFormatError(f"{path}: not a readable Parquet file ({err})") from None
        for index, row in enumerate(rows):
            yield f"{path}[row {index}]", row
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DataFormatError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    if name.endswith((".json", ".json.gz")) and text.lstrip().startswith(("[", "{")):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            if text.lstrip().startswith("{"):  # JSON Lines in a .json file
                yield from _iter_json_lines(path, iter(text.splitlines()))
                return
            raise DataFormatError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
        if isinstance(items, dict):
            yield from super_ni_rows(items, str(path))
            return
        for index, row in enumerate(items):
            yield f"{path}[item {index}]", row
        return
    yield from _iter_json_lines(path, iter(text.splitlines()))


def iter_hub_rows(name: str, split: str) -> Iterator[tuple[str, Any]]:
    """(location, row) pairs of a hub dataset (or a local dataset folder) through ``datasets``."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types (network, missing split, bad builder)
        raise DataFormatError(f"could not load dataset {name!r} (split {split!r}): {err}") from None
    for index, row in enumerate(dataset):
        yield f"{name}[{split}][row {index}]", row


def _string_field(row: dict, key: str, where: str, required: bool, allow_empty: bool) -> str:
    if key not in row or row[key] is None:
        if required:
            raise DataFormatError(f"{where}: field {key!r} is missing")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    _check_encodable(value, key, where)
    if not allow_empty and not value.strip():
        raise DataFormatError(f"{where}: field {key!r} is empty")
    return value


def _check_encodable(value: str, key: str, where: str) -> None:
    """JSON can carry lone UTF-16 surrogates (``"\\ud800"``) that no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataFormatError(
            f"{where}: field {key!r} is not valid Unicode text ({err.reason} at character {err.start})"
        ) from None


def references_field(row: dict, key: str, where: str) -> list[str]:
    """A row's references in ``key``: a string or a non-empty list of strings, not all empty."""
    value = row.get(key)
    if value is None:
        raise DataFormatError(f"{where}: field {key!r} is missing")
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise DataFormatError(f"{where}: field {key!r} must be a string or a non-empty list of strings")
    for ref in refs:
        _check_encodable(ref, key, where)
    if not any(r.strip() for r in refs):
        raise DataFormatError(f"{where}: field {key!r} is empty")
    return refs


def super_ni_rows(task: dict[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    """The instances of a Super-NaturalInstructions task as MiniLLM rows: the definition is the instruction, each
    instance's ``output`` list its references, the task's ``Categories`` (or file name) its category."""
    if "Definition" not in task or "Instances" not in task:
        raise DataFormatError(f"{where}: a JSON object that is not {SUPER_NI}; found fields {sorted(task)[:8]}")
    definition = task["Definition"]
    definition = definition[0] if isinstance(definition, list) and definition else definition
    if not isinstance(definition, str) or not definition.strip():
        raise DataFormatError(f"{where}: field 'Definition' must be a non-empty string (or a list of them)")
    instances = task["Instances"]
    if not isinstance(instances, list) or not instances:
        raise DataFormatError(f"{where}: field 'Instances' must be a non-empty list")
    categories = task.get("Categories")
    category = categories[0] if isinstance(categories, list) and categories else Path(where).stem
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise DataFormatError(f"{where}[instance {index}]: an instance must be a JSON object")
        yield f"{where}[instance {index}]", {"instruction": definition, "input": instance.get("input", ""),
                                              "output": instance.get("output"), "category": category}  # fmt: skip


def detect_layout(row: Any, where: str) -> Layout:
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    chat = chat_layout_field(row)
    if chat is not None:
        return CHATS[chat]
    if "response" in row:
        return DOLLY_RAW
    if "output" in row:
        return MINILLM
    if "instances" in row:
        return SELF_INSTRUCT
    if "turns" in row:
        return FASTCHAT
    raise DataFormatError(f"{where}: no known row layout (found fields {sorted(row)[:8]}); accepted: {ACCEPTED}")


def expand_row(row: Any, layout: Layout, where: str) -> Iterator[tuple[str, Any]]:
    """A Self-Instruct task gives one row per instance; a FastChat question one row (its first turn, no output);
    every other layout's row is itself."""
    if layout is SELF_INSTRUCT:
        instances = row.get("instances") if isinstance(row, dict) else None
        if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
            raise DataFormatError(f"{where}: field 'instances' must be a non-empty list of {{input, output}} objects")
        for index, instance in enumerate(instances):
            yield f"{where}[instance {index}]", {"instruction": row.get("instruction"), **instance,
                                                  "category": row.get("motivation_app")}  # fmt: skip
    elif layout is FASTCHAT:
        turns = row.get("turns") if isinstance(row, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise DataFormatError(f"{where}: field 'turns' must be a non-empty list of strings")
        yield where, {"instruction": turns[0], "input": "", "question_id": row.get("question_id"),
                      "category": row.get("category")}  # fmt: skip
    else:
        yield where, row


def normalize_row(row: Any, layout: Layout, where: str, multi_reference: bool = False) -> dict[str, Any]:
    """One row as ``{"instruction", "input", "output"[, "category"]}``; ``output`` is a list when
    ``multi_reference`` (evaluation sets whose rows carry several references). A conversation becomes
    ``{"messages", "output"}`` (``output``: its last assistant turn, the one reference)."""
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if layout.chat_field is not None:
        if layout.chat_field not in row:
            raise DataFormatError(f"{where}: field {layout.chat_field!r} is missing (the source's first row is "
                                  f"in the {layout.name} layout)")  # fmt: skip
        return conversation_record(row, layout.chat_field, where)
    record: dict[str, Any] = {
        "instruction": _string_field(row, "instruction", where, required=True, allow_empty=False),
        "input": _string_field(row, layout.input, where, required=layout.input_required, allow_empty=True),
    }
    if layout is FASTCHAT:
        if not multi_reference:
            raise DataFormatError(
                f"{where}: FastChat questions carry no responses to train on; give a file with responses"
            )
        record["output"] = None  # references come from another file (attach_references)
        record["question_id"] = row.get("question_id")
    elif multi_reference:
        record["output"] = references_field(row, layout.output, where)
    else:
        # a teacher-generated row (generate-data) may hold an empty response: the teacher stopped at once, and
        # its training target is the EOS alone
        generated = isinstance(row.get("generated_by"), dict)
        record["output"] = _string_field(row, layout.output, where, required=True, allow_empty=generated)
    category = row.get("category", row.get("topic"))
    if isinstance(category, str):
        record["category"] = category
    return record


def load_records(
    source: str, split: str = "train", multi_reference: bool = False, single_exchange: bool = False
) -> list[dict[str, Any]]:
    """All rows of a source, validated and normalised. For a hub dataset (or a local dataset folder)
    ``split`` names the split to read; ``name@split`` in ``source`` overrides it. ``single_exchange`` (the Dolly
    template): a conversation other than one user turn and one reply is an error naming its line."""
    if is_local_source(source) and not os.path.isdir(source):
        rows = iter_local_rows(Path(os.path.expanduser(source)))
    else:  # a hub dataset name, or a local dataset folder that `datasets` understands
        name, _, named_split = source.partition("@")
        rows = iter_hub_rows(name, named_split or split)
    records: list[dict[str, Any]] = []
    layout: Optional[Layout] = None
    for where, row in rows:
        layout = layout or detect_layout(row, where)
        for item_where, item in expand_row(row, layout, where):
            records.append(normalize_row(item, layout, item_where, multi_reference))
            if single_exchange and layout.chat_field is not None:
                check_single_exchange(records[-1]["messages"], item_where)
    if not records:
        raise DataFormatError(f"{source}: no rows (the data file is empty)")
    return records
