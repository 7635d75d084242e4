"""Teacher-generated training data (sequence-level KD, Kim & Rush 2016): the teacher's sampled response to every
prompt of a split, written as a file in the split's own layout that ``fit`` reads like any other.

Each line: ``instruction``, ``context``, ``response`` (the teacher's) for an instruction record, or ``messages``
for a conversation (its turns with the teacher's sample as the last assistant turn); ``category`` when known, and
``generated_by`` (the teacher, the sampling settings and seed). Lines are written batch by batch to
``.<name>.partial`` (flushed and fsynced); a killed run leaves that file, and the next run checks that its
lines are this data's prompts with these settings, keeps them and continues after the last complete line;
the finished file is renamed into place: the output file is complete or absent, never half written. The
sampling seed of batch b is ``seed + b``, so a resumed file equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from lit_kd.data.conversation import is_conversation, prompt_messages, with_response
from lit_kd.errors import DataFormatError
from lit_kd.utils.io import atomic_write_text, is_out_of_space, out_of_space_error


def generated_split_paths(out_dir: str | os.PathLike, split_names: Iterable[str]) -> dict[str, Path]:
    """The layout of teacher-generated data: each split's file, ``<out_dir>/<split>.jsonl`` (what ``generate-data``
    writes and what ``sweep`` trains on)."""
    return {name: Path(out_dir) / f"{name}.jsonl" for name in split_names}


def record_line(record: dict[str, Any], response: str, generated_by: Optional[dict[str, Any]] = None) -> str:
    """One JSON line: a Dolly row (instruction, context, response) or a conversation whose last reply is
    ``response``."""
    row: dict[str, Any]
    if is_conversation(record):
        row = {"messages": with_response(record, response)["messages"]}
    else:
        row = {"instruction": record["instruction"], "context": record["input"], "response": response}
    if "category" in record:
        row["category"] = record["category"]
    if generated_by is not None:
        row["generated_by"] = generated_by
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """A split as given (its own responses, e.g. the validation references), in its layout, atomically."""
    return atomic_write_text(path, "".join(record_line(r, r["output"]) for r in records))


def same_prompt(row: Any, record: dict[str, Any]) -> bool:
    """Whether a written line holds ``record``'s prompt (instruction and context, or the turns before the reply)."""
    if not isinstance(row, dict):
        return False
    if is_conversation(record):
        messages = row.get("messages")
        return isinstance(messages, list) and messages[:-1] == prompt_messages(record)
    return row.get("instruction") == record["instruction"] and row.get("context") == record["input"]


def _kept_lines(partial: Path, records: Sequence[dict[str, Any]], generated_by: dict[str, Any]) -> list[str]:
    """The complete lines of an interrupted run, checked against this run's prompts and settings."""
    if not partial.is_file():
        return []
    lines = partial.read_text(encoding="utf-8").split("\n")
    complete = lines[:-1]  # the text after the last newline is a line the kill cut short
    for number, line in enumerate(complete):
        try:
            row = json.loads(line)
        except ValueError:
            raise DataFormatError(
                f"{partial}:{number + 1}: not a line lit_kd wrote; run again with --restart true to start over"
            )
        record = records[number] if number < len(records) else None
        same = record is not None and same_prompt(row, record) and row.get("generated_by") == generated_by
        if not same:
            raise DataFormatError(
                f"{partial}:{number + 1} was written for other data or settings; run again with --restart true to "
                "start over (or use the same config and options)"
            )
    return [line + "\n" for line in complete]


def write_generated_split(
    path: Path,
    records: Sequence[dict[str, Any]],
    generate: Callable[[Sequence[dict[str, Any]], int], list[str]],
    generated_by: dict[str, Any],
    batch_size: int,
    seed: int,
    progress: Optional[Callable[[int], None]] = None,
    restart: bool = False,
) -> Path:
    """Write ``path`` with ``generate(records_of_batch, seed + b)``'s responses, resuming an interrupted run;
    ``restart``: remove what an interrupted run left and start the split over."""
    partial = path.with_name(f".{path.name}.partial")
    if restart and partial.is_file():
        partial.unlink()
        print(f"removed {partial}, the lines an interrupted run left (--restart starts the split over)", flush=True)
    kept = _kept_lines(partial, records, generated_by)
    done = len(kept) - len(kept) % batch_size  # restart at a batch boundary: each batch has its own seed
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "w", encoding="utf-8") as stream:
            stream.writelines(kept[:done])
            stream.flush()
            if progress is not None:
                progress(done)
            for start in range(done, len(records), batch_size):
                batch = records[start : start + batch_size]
                responses = generate(batch, seed + start // batch_size)
                stream.writelines(record_line(r, text, generated_by) for r, text in zip(batch, responses))
                stream.flush()
                os.fsync(stream.fileno())
                if progress is not None:
                    progress(start + len(batch))
        os.replace(partial, path)
    except OSError as err:
        if is_out_of_space(err):
            raise out_of_space_error(partial) from None
        raise
    return path
