"""A tiny byte-level BPE tokenizer for tests and smoke runs (``data/tiny/tokenizer``).

Rebuild the shipped copy with ``python -m lit_kd.models.tiny data/tiny/tokenizer``: it is trained on
the prompt template and the project's own demo instructions, so tiny models see short sequences.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable

from transformers import PreTrainedTokenizerFast

from lit_kd.data.prompt import PROMPT_NO_INPUT, PROMPT_WITH_INPUT

EOS = "<|endoftext|>"
DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "demo" / "instructions.jsonl"


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with ``vocab_size`` entries (256 bytes, merges, one EOS/pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)


def demo_texts(path: Path = DEMO_DATA) -> list[str]:
    texts = [PROMPT_NO_INPUT, PROMPT_WITH_INPUT]
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.extend([row["instruction"], row["input"], row["output"]])
    return texts


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m lit_kd.models.tiny OUTPUT_DIR")
    train_byte_bpe(demo_texts()).save_pretrained(argv[0])
    print(f"wrote {argv[0]}")


if __name__ == "__main__":
    main()
