"""Reading instruction data: local JSONL / JSONL.gz / JSON / Parquet files or a hub dataset.

Two row layouts are recognised (from the first row of a source):

* raw databricks-dolly-15k: ``instruction``, ``context``, ``response``, ``category``;
* MiniLLM/DistiLLM processed: ``instruction``, ``input`` (optional), ``output`` (+ ``prompt``, ignored:
  the prompt is always rebuilt from ``lit_kd.data.prompt`` so training and generation share one template).

Every row becomes ``{"instruction", "input", "output"}`` (+ ``category`` when known). A malformed line,
a missing or non-string field or an empty response is a ``DataFormatError`` naming the file and line.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from lit_kd.errors import DataFormatError

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


@dataclass(frozen=True)
class Layout:
    """Field names of one row layout."""

    name: str
    input: str
    output: str
    input_required: bool


DOLLY_RAW = Layout("raw Dolly (instruction/context/response)", input="context", output="response", input_required=True)
MINILLM = Layout("MiniLLM (instruction/input/output)", input="input", output="output", input_required=False)


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
    if name.endswith((".json", ".json.gz")) and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
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


def _references(row: dict, key: str, where: str) -> list[str]:
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


def detect_layout(row: Any, where: str) -> Layout:
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if "response" in row:
        return DOLLY_RAW
    if "output" in row:
        return MINILLM
    raise DataFormatError(
        f"{where}: cannot tell the row layout: expected a 'response' field (raw Dolly) or an 'output' field "
        f"(MiniLLM); found fields {sorted(row)}"
    )


def normalize_row(row: Any, layout: Layout, where: str, multi_reference: bool = False) -> dict[str, Any]:
    """One row as ``{"instruction", "input", "output"[, "category"]}``; ``output`` is a list when
    ``multi_reference`` (evaluation sets whose rows carry several references)."""
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    record: dict[str, Any] = {
        "instruction": _string_field(row, "instruction", where, required=True, allow_empty=False),
        "input": _string_field(row, layout.input, where, required=layout.input_required, allow_empty=True),
    }
    if multi_reference:
        record["output"] = _references(row, layout.output, where)
    else:
        # a teacher-generated row (generate-data) may hold an empty response: the teacher stopped at once, and
        # its training target is the EOS alone
        generated = isinstance(row.get("generated_by"), dict)
        record["output"] = _string_field(row, layout.output, where, required=True, allow_empty=generated)
    category = row.get("category", row.get("topic"))
    if isinstance(category, str):
        record["category"] = category
    return record


def load_records(source: str, split: str = "train", multi_reference: bool = False) -> list[dict[str, Any]]:
    """All rows of a source, validated and normalised. For a hub dataset (or a local dataset folder)
    ``split`` names the split to read; ``name@split`` in ``source`` overrides it."""
    if is_local_source(source) and not os.path.isdir(source):
        rows = iter_local_rows(Path(os.path.expanduser(source)))
    else:  # a hub dataset name, or a local dataset folder that `datasets` understands
        name, _, named_split = source.partition("@")
        rows = iter_hub_rows(name, named_split or split)
    records: list[dict[str, Any]] = []
    layout: Optional[Layout] = None
    for where, row in rows:
        layout = layout or detect_layout(row, where)
        records.append(normalize_row(row, layout, where, multi_reference))
    if not records:
        raise DataFormatError(f"{source}: no rows (the data file is empty)")
    return records
