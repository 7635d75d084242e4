"""The five evaluation sets of the paper, in MiniLLM's layout (``<dir>/<name>/valid.jsonl``).

| name       | file (under ``data_dir``)  | what                                             |
|------------|----------------------------|--------------------------------------------------|
| dolly      | dolly/valid.jsonl          | Dolly test split, 500 rows (MiniLLM names it valid) |
| self_inst  | self-inst/valid.jsonl      | Self-Instruct user-oriented, 242 rows            |
| vicuna     | vicuna/valid.jsonl         | Vicuna questions, 80 rows (GPT-3.5 references)    |
| sinst      | sinst/11_/valid.jsonl      | Super-NaturalInstructions, several references per row |
| uinst      | uinst/11_/valid.jsonl      | Unnatural Instructions                           |

A benchmark may instead be given as ``name=SOURCE``: a local file or a hub dataset (``datasets``), in any layout
``lit_kd.data.records`` detects — MiniLLM rows (``output`` a string or a list of references), raw Dolly,
Self-Instruct's ``user_oriented_instructions.jsonl``, a Super-NaturalInstructions task JSON, or FastChat's
``question.jsonl``, which has no references: ROUGE-L then needs a references file (``references[name]``),
matched by ``question_id`` or by the instruction text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lit_kd.data.records import DataFormatError, is_local_source, iter_local_rows, load_records, references_field

BENCHMARK_FILES = {
    "dolly": "dolly/valid.jsonl",
    "self_inst": "self-inst/valid.jsonl",
    "vicuna": "vicuna/valid.jsonl",
    "sinst": "sinst/11_/valid.jsonl",
    "uinst": "uinst/11_/valid.jsonl",
}
PAPER_BENCHMARKS = tuple(BENCHMARK_FILES)


@dataclass
class Benchmark:
    name: str
    source: str
    records: list[dict[str, Any]]


def resolve_benchmark(spec: str, data_dir: str) -> tuple[str, str]:
    """``name`` (a known benchmark under ``data_dir``) or ``name=SOURCE`` → (name, source)."""
    if "=" in spec:
        name, source = spec.split("=", 1)
        return name, source
    if spec not in BENCHMARK_FILES:
        raise DataFormatError(
            f"unknown benchmark {spec!r}; known: {', '.join(BENCHMARK_FILES)} (or give name=FILE_OR_HUB_DATASET)"
        )
    return spec, os.path.join(data_dir, BENCHMARK_FILES[spec])


def load_benchmarks(
    specs: list[str],
    data_dir: str,
    max_examples: Optional[int] = None,
    split: str = "test",
    references: Optional[dict[str, str]] = None,
) -> list[Benchmark]:
    """Every benchmark's records, with references attached from ``references[name]`` (a file) where the set has
    none of its own (FastChat questions); all files are checked before any is read, so a missing one fails fast."""
    references = dict(references or {})
    resolved = [resolve_benchmark(spec, data_dir) for spec in specs]
    unknown = sorted(set(references) - {name for name, _ in resolved})
    if unknown:
        raise DataFormatError(f"--references names {', '.join(unknown)}, which is not among the benchmarks")
    files = [(name, source) for name, source in resolved] + list(references.items())
    missing = [f"{name}: {source}" for name, source in files if is_local_source(source) and not os.path.exists(source)]
    if missing:
        raise DataFormatError("benchmark file not found — " + "; ".join(missing))
    benchmarks = []
    for name, source in resolved:
        records = load_records(source, split=split, multi_reference=True)
        if name in references:
            attach_references(records, references[name], name)
        elif any(record["output"] is None for record in records):
            raise DataFormatError(
                f"benchmark {name} ({source}): its questions have no reference answers (FastChat's question.jsonl), "
                f"and ROUGE-L needs references: give a file of them with --references '{{{name}: FILE}}' (rows with "
                "question_id or instruction, and output or FastChat's choices)"
            )
        benchmarks.append(Benchmark(name, source, records[:max_examples] if max_examples else records))
    return benchmarks


def reference_rows(source: str) -> tuple[dict[Any, list[str]], dict[str, list[str]]]:
    """The references of a file, by ``question_id`` and by instruction text: each row's ``output`` (a string or a
    list), or the first turn of each of its FastChat ``choices``."""
    by_id: dict[Any, list[str]] = {}
    by_text: dict[str, list[str]] = {}
    for where, row in iter_local_rows(Path(os.path.expanduser(source))):
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
        if "choices" in row:  # FastChat's answer files: each choice's first turn is a reference
            choices = row["choices"] if isinstance(row["choices"], list) else []
            turns = [choice.get("turns") for choice in choices if isinstance(choice, dict)]
            refs = [t[0] for t in turns if isinstance(t, list) and t and isinstance(t[0], str) and t[0].strip()]
        elif "output" in row or "reference" in row:
            refs = references_field(row, "output" if "output" in row else "reference", where)
        else:
            refs = []
        if not refs:
            raise DataFormatError(f"{where}: no reference (expected output, reference or FastChat choices)")
        if "question_id" in row:
            by_id[row["question_id"]] = refs
        if isinstance(row.get("instruction"), str):
            by_text[row["instruction"].strip()] = refs
    return by_id, by_text


def attach_references(records: list[dict[str, Any]], source: str, name: str) -> None:
    """Set each record's ``output`` to its references in ``source``, matched by ``question_id``, else by the
    instruction; one error naming the questions that have none."""
    by_id, by_text = reference_rows(source)
    unmatched = []
    for record in records:
        refs = by_id.get(record.get("question_id")) if record.get("question_id") is not None else None
        refs = refs or by_text.get(record["instruction"].strip())
        if refs is None:
            unmatched.append(record.get("question_id", record["instruction"][:40]))
        else:
            record["output"] = refs
    if unmatched:
        raise DataFormatError(
            f"benchmark {name}: {len(unmatched)} of {len(records)} questions have no reference in {source} "
            f"(first: {', '.join(map(str, unmatched[:5]))}); match them by question_id or by the instruction text"
        )
