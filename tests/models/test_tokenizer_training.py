"""A student tokenizer trained here: SentencePiece-style, byte fallback for unseen characters, offsets, and a
save/load round trip."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lit_kd.data.alignment import response_alignment, tokenize_with_spans
from lit_kd.models.tokenizer_training import save_tokenizer, train_bpe_tokenizer
from tests.data.test_alignment import CORPUS, byte_level


def test_a_trained_tokenizer_spells_any_text_and_loads_back(tmp_path):
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=400)
    assert len(tokenizer) == 400 and tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    text = "The teacher said Ω 42 times"  # Ω never occurs in the corpus: byte fallback
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    assert "<0xCE>" in tokenizer.convert_ids_to_tokens(ids)
    loaded = AutoTokenizer.from_pretrained(save_tokenizer(tokenizer, tmp_path / "tok"))
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids and loaded.is_fast
    assert len(tokenize_with_spans(loaded, text).spans) == len(ids)  # it gives offsets
    teacher = byte_level()
    n_t = len(teacher(text, add_special_tokens=False)["input_ids"])
    groups = response_alignment(teacher, loaded, text, n_t + 1, len(ids) + 1).groups
    assert groups[-1] == ((n_t, n_t + 1), (len(ids), len(ids) + 1))


def test_a_vocabulary_too_small_for_the_byte_entries_is_refused():
    with pytest.raises(ValueError, match="no room"):
        train_bpe_tokenizer(CORPUS, vocab_size=100)
