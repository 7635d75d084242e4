"""Tokenized splits: records through a rendering (``lit_kd.data.rendering``) into supervised sequences with
``Dataset.map``, cached as Arrow files by ``datasets`` and reused by the next run; what truncation did, counted."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lit_kd.data.alignment import encode_pair_example
from lit_kd.data.rendering import Rendering
from lit_kd.data.tokenize import records_fingerprint, tokenizer_fingerprint
from lit_kd.errors import DataFormatError

CACHE_FORMAT = "4"  # bump whenever the encoding or the cached columns change: old cache entries are then unused


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


def default_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "lit_kd_tokenized"


def tokenize_records(
    records: list[dict[str, Any]],
    rendering: Rendering,
    max_length: int,
    cache_dir: Optional[str] = None,
    desc: str = "Tokenizing",
    fingerprints: Optional[tuple[str, str]] = None,
    teacher_rendering: Optional[Rendering] = None,
) -> TokenizedSplit:
    """Tokenize records with ``Dataset.map`` through a rendering (``lit_kd.data.rendering``: the prompt format for a
    tokenizer); the result is cached in an Arrow file keyed by the records' content, the tokenizer, the rendering
    and ``max_length``, and reused on the next run. ``fingerprints``: the records' and the tokenizer's hashes when
    already computed. A ``teacher_rendering`` of its own (a cross-tokenizer pair: the teacher's tokenizer and
    template): each example also holds the teacher's tokens and the aligned groups
    (``lit_kd.data.alignment.encode_pair_example``), and the key holds the teacher's side too. An error in a record
    names its place in the split (``desc``, record number)."""
    import datasets

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
