"""The vocabulary map of a tokenizer pair: entries matched by the bytes they spell, across byte-level (Ġ) and
SentencePiece-style (▁, <0xNN>) vocabularies."""

from __future__ import annotations

import pytest
import torch
from tokenizers import decoders, pre_tokenizers

from lit_kd.errors import VocabularyMismatchError
from lit_kd.models.vocab_map import build_vocabulary_map, token_bytes
from tests.data.test_alignment import CharacterTokenizer, byte_level, trained


def test_an_identical_pair_maps_every_entry_to_itself():
    tokenizer = byte_level()
    vocabulary = build_vocabulary_map(tokenizer, tokenizer)
    special = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    expected = [i for i in range(len(tokenizer)) if i not in special]
    assert sorted(vocabulary.teacher_ids.tolist()) == expected
    assert torch.equal(vocabulary.teacher_ids, vocabulary.student_ids)
    assert vocabulary.matched_share == pytest.approx(len(expected) / len(tokenizer))


def test_byte_level_and_sentencepiece_entries_spell_bytes():
    byte_tokens = byte_level()
    spelled = token_bytes(byte_tokens)
    assert spelled[byte_tokens.convert_tokens_to_ids("Ġb")] == b" b"
    assert spelled[byte_tokens.eos_token_id] is None  # special tokens are not matched by their text
    metaspace = trained(pre_tokenizers.Metaspace(), decoders.Metaspace())
    spelled = token_bytes(metaspace)
    vocab = metaspace.get_vocab()
    assert spelled[vocab["<0xF0>"]] == b"\xf0"  # byte fallback
    word = next(t for t in vocab if t.startswith("▁") and len(t) > 3 and t[1:].isalpha())
    assert spelled[vocab[word]] == (" " + word[1:]).encode()


def test_a_byte_level_and_a_sentencepiece_vocabulary_match_on_shared_strings():
    teacher, student = byte_level(), trained(pre_tokenizers.Metaspace(), decoders.Metaspace())
    vocabulary = build_vocabulary_map(teacher, student)
    pairs = dict(zip(vocabulary.teacher_ids.tolist(), vocabulary.student_ids.tolist()))
    assert pairs[teacher.eos_token_id] == student.eos_token_id
    t_vocab, s_vocab = teacher.get_vocab(), student.get_vocab()
    shared = [w for w in ("the", "a", "e") if "Ġ" + w in t_vocab and "▁" + w in s_vocab]
    assert shared and all(pairs[t_vocab["Ġ" + w]] == s_vocab["▁" + w] for w in shared)
    assert len(set(pairs.values())) == len(pairs)  # one student entry per teacher entry
    assert 0.05 < vocabulary.matched_share < 1.0 and "teacher entries" in vocabulary.describe()


def test_a_pair_sharing_almost_no_strings_is_one_error_naming_the_share():
    with pytest.raises(VocabularyMismatchError, match=r"share almost no token strings: \d+ of [\d,]+ teacher entries"):
        build_vocabulary_map(byte_level(), CharacterTokenizer(), min_share=0.5)


def test_a_character_token_wins_over_its_byte_fallback_spelling_numbered_first():
    """Llama 2 and Mistral number <0x00>..<0xFF> before the characters: "a" must still pair with "a"."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}, "a": 258, "b": 259, "▁a": 260}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    student = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
    teacher = byte_level()
    vocabulary = build_vocabulary_map(teacher, student, min_share=0.0)
    pairs = dict(zip(vocabulary.teacher_ids.tolist(), vocabulary.student_ids.tolist()))
    t_vocab = teacher.get_vocab()
    assert pairs[t_vocab["a"]] == 258 and pairs[t_vocab["b"]] == 259 and pairs[t_vocab["Ġa"]] == 260
    assert pairs[t_vocab["c"]] == 2 + ord("c")  # a character the student spells only as a byte: its byte token
