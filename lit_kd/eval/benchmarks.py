"""The five evaluation sets of the paper, in MiniLLM's layout (``<dir>/<name>/valid.jsonl``).

| name       | file (under ``data_dir``)  | what                                             |
|------------|----------------------------|--------------------------------------------------|
| dolly      | dolly/valid.jsonl          | Dolly test split, 500 rows (MiniLLM names it valid) |
| self_inst  | self-inst/valid.jsonl      | Self-Instruct user-oriented, 242 rows            |
| vicuna     | vicuna/valid.jsonl         | Vicuna questions, 80 rows (GPT-3.5 references)    |
| sinst      | sinst/11_/valid.jsonl      | Super-NaturalInstructions, several references per row |
| uinst      | uinst/11_/valid.jsonl      | Unnatural Instructions                           |

A benchmark may instead be given as ``name=SOURCE``: a local file or a hub dataset (``datasets``).
Rows have ``instruction``, optional ``input`` and ``output`` (a string or a list of references).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from lit_kd.data.records import DataFormatError, is_local_source, load_records

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
    specs: list[str], data_dir: str, max_examples: Optional[int] = None, split: str = "test"
) -> list[Benchmark]:
    """Every benchmark's records; all files are checked before any is read, so a missing one fails fast."""
    resolved = [resolve_benchmark(spec, data_dir) for spec in specs]
    missing = [
        f"{name}: {source}" for name, source in resolved if is_local_source(source) and not os.path.exists(source)
    ]
    if missing:
        raise DataFormatError("benchmark file not found — " + "; ".join(missing))
    benchmarks = []
    for name, source in resolved:
        records = load_records(source, split=split, multi_reference=True)
        benchmarks.append(Benchmark(name, source, records[:max_examples] if max_examples else records))
    return benchmarks
