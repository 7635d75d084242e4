"""A tokenizer of the student's own, trained on text with the ``tokenizers`` library: a student that does not
share the teacher's vocabulary (the cross-tokenizer pair).

SentencePiece-style BPE (``▁`` marks a space, ``<0x00>``..``<0xFF>`` cover any byte the merges never saw), so it
splits text differently from a byte-level (``Ġ``) teacher such as SmolLM2 or GPT-2 while spelling every string;
``</s>`` is EOS, ``<pad>`` the pad token and ``<unk>`` never used (byte fallback). Saved as a Hugging Face
directory that ``AutoTokenizer.from_pretrained`` loads (fast backend, so it gives offsets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "</s>", "<pad>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE of ``vocab_size`` entries (specials and the 256 byte entries included) trained
    on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 256 + 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room beside the specials and the 256 byte entries")
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace()]
    )
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens), min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
    )
    backend.train_from_iterator(texts, trainer)
    spec = json.loads(backend.to_str())  # the byte entries join the model's vocabulary (not added tokens)
    vocab = spec["model"]["vocab"]
    for token in byte_tokens:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: str | Path) -> Path:
    """Write ``tokenizer`` as a Hugging Face directory."""
    tokenizer.save_pretrained(str(out))
    return Path(out)
