"""``python -m lit_kd train-tokenizer``: a student tokenizer of its own, trained on instruction data (the
cross-tokenizer pair's student; ``lit_kd.models.tokenizer_training``).

    python -m lit_kd train-tokenizer --data ../shared/data/minillm/dolly/train.jsonl.gz \
        --out logs/tokenizers/dolly-16k --vocab_size 16000

The texts are each record's prompt (the template the student reads) and response. The directory also holds
``lit_kd_tokenizer.json``, what it was trained from: the same command again finds it and does nothing, and an
``--out`` that holds anything else is refused (nothing is overwritten).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lit_kd.data.conversation import is_conversation
from lit_kd.data.prompt import format_prompt
from lit_kd.data.records import load_records
from lit_kd.data.tokenize import records_fingerprint
from lit_kd.errors import ConfigError
from lit_kd.models.tokenizer_training import train_bpe_tokenizer
from lit_kd.utils.io import atomic_directory, ensure_writable_dir

PROVENANCE = "lit_kd_tokenizer.json"


def train_tokenizer(
    data: str, out: str, vocab_size: int = 16000, min_frequency: int = 2, max_examples: Optional[int] = None
) -> Path:
    """Train a student tokenizer (SentencePiece-style BPE with byte fallback) on instruction data.

    Args:
        data: Instruction records or conversations (a file in any layout ``data.train`` reads, or a hub dataset
            name): their prompts and responses, or every turn's text.
        out: The tokenizer directory to write (Hugging Face layout: ``AutoTokenizer.from_pretrained`` loads it).
        vocab_size: Entries in all, the 3 special tokens and the 256 byte entries included.
        min_frequency: The least count of a pair the trainer merges.
        max_examples: Train on the first N records only.
    """
    if not out.strip():
        raise ConfigError("--out must name the tokenizer directory to write, got ''")
    if vocab_size < 260:
        raise ConfigError(f"--vocab_size must be at least 260 (3 specials, 256 bytes and one merge), got {vocab_size}")
    if min_frequency < 1 or (max_examples is not None and max_examples < 1):
        raise ConfigError("--min_frequency and --max_examples must be positive")
    target = Path(out)
    records = load_records(data)[:max_examples]  # a malformed line fails here, before any training
    provenance = {"data": records_fingerprint(records), "records": len(records), "vocab_size": vocab_size,
                  "min_frequency": min_frequency, "format": 1}  # fmt: skip
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        stored = target / PROVENANCE
        if stored.is_file() and json.loads(stored.read_text()) == provenance:
            print(f"{target}: already trained on these {len(records):,} records (vocab_size {vocab_size}); kept")
            return target
        raise ConfigError(
            f"--out {target} already exists and is not this tokenizer (other data or settings); choose a new "
            "directory (nothing was written)"
        )
    ensure_writable_dir(target.parent, "--out's folder")
    texts = ("\n".join(m["content"] for m in r["messages"]) if is_conversation(r)
             else format_prompt(r["instruction"], r["input"]) + r["output"] for r in records)  # fmt: skip
    tokenizer = train_bpe_tokenizer(texts, vocab_size, min_frequency)
    with atomic_directory(target) as tmp:
        tokenizer.save_pretrained(str(tmp))
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1) + "\n")
    print(f"wrote {target}: {len(tokenizer):,} entries trained on {len(records):,} records of {data}")
    return target
