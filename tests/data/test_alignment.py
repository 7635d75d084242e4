"""Aligning two tokenizations of one response: groups by byte offsets, against tokenizers built here whose splits
differ in the ways real pairs do (digits, multi-byte characters, SentencePiece's ▁ vs byte-level Ġ)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, PythonBackend

from lit_kd.data.alignment import align_tokens, cuts, response_alignment, tokenize_with_spans
from lit_kd.errors import ConfigError
from tests.conftest import TINY_TOKENIZER

CORPUS = [
    "The quick brown fox jumps over the lazy dog 12345 times.",
    "Distillation moves knowledge from a teacher to a student model.",
    "Prices rose 2024 by 3.5 percent; 😀 emoji and 日本語 text too.",
    "naïve café résumé — unicode words, tabs\tand\nnew lines",
] * 20


def byte_level() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


def trained(
    pre_tokenizer, decoder, vocab_size: int = 300, byte_alphabet: bool = False, bos: bool = False
) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=not byte_alphabet))
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizer, decoder
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_alphabet else []
    special = ["<unk>", "</s>", "<s>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(CORPUS, trainer)
    if not byte_alphabet:  # SentencePiece's byte-fallback entries <0x00>..<0xFF>, for characters never seen
        spec = json.loads(tokenizer.to_str())
        vocab = spec["model"]["vocab"]
        for byte in range(256):
            vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
        tokenizer = Tokenizer.from_str(json.dumps(spec))
    if bos:  # a tokenizer that puts <s> before every text it encodes with special tokens (Llama-style)
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>", bos_token="<s>")


@pytest.fixture(scope="module")
def sides() -> dict[str, PreTrainedTokenizerFast]:
    """A byte-level BPE (GPT-2 style), a SentencePiece-style BPE (▁ words) and a byte-level BPE that splits every
    digit, each with its own merges."""
    return {
        "byte_level": byte_level(),
        "metaspace": trained(pre_tokenizers.Metaspace(), decoders.Metaspace()),
        "digits": trained(
            pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
            ),
            decoders.ByteLevel(),
            vocab_size=400,
            byte_alphabet=True,
        ),
    }


def group_text(text: str, tokenized, span) -> bytes:
    """The bytes a group of tokens covers: from where its first token's text starts (its trimmed whitespace
    included) to where its last ends."""
    data = text.encode("utf-8")
    start = tokenized.spans[span[0]][0]
    end = max(end for _, end in tokenized.spans[span[0] : span[1]])
    return data[start:end]


def check_tiles(text: str, teacher, student) -> None:
    """The groups tile both token sequences in order, and the two sides of each group end at the same byte."""
    t, s = tokenize_with_spans(teacher, text), tokenize_with_spans(student, text)
    alignment = align_tokens(t, s)
    assert [g[0][0] for g in alignment.groups] == [0] + [g[0][1] for g in alignment.groups[:-1]]
    assert [g[1][0] for g in alignment.groups] == [0] + [g[1][1] for g in alignment.groups[:-1]]
    assert alignment.teacher_tokens == len(t.ids) and alignment.student_tokens == len(s.ids)
    for (t0, t1), (s0, s1) in alignment.groups:
        assert max(e for _, e in t.spans[t0:t1]) == max(e for _, e in s.spans[s0:s1])
        assert group_text(text, t, (t0, t1)).strip() == group_text(text, s, (s0, s1)).strip()


def test_identical_tokenizers_align_one_to_one_even_inside_a_split_character(sides):
    text = "héllo 😀 world 12345"
    tokenized = tokenize_with_spans(sides["byte_level"], text)
    assert tokenized.spans.count((7, 11)) == 4  # the emoji's four byte tokens share its span ("héllo " is 7 bytes)
    alignment = align_tokens(tokenized, tokenized)
    assert alignment.groups == [((i, i + 1), (i, i + 1)) for i in range(len(tokenized.ids))]


def test_digits_split_differently_group_as_one_to_many(sides):
    text = "in 2024 we sold 12345 apples"
    teacher, student = tokenize_with_spans(sides["byte_level"], text), tokenize_with_spans(sides["digits"], text)
    assert [teacher.tokens[i] for i in range(7, 11)] == ["Ġ12", "3", "4", "5"]  # the teacher's merges
    alignment = align_tokens(teacher, student)
    (twelve,) = [g for g in alignment.groups if g[0] == (7, 8)]
    assert [student.tokens[i] for i in range(*twelve[1])] == ["Ġ", "1", "2"]  # one token per digit: a 1:3 group
    assert [g for g in alignment.groups if g[0] in ((8, 9), (9, 10), (10, 11))] == [
        ((8, 9), (twelve[1][1], twelve[1][1] + 1)), ((9, 10), (twelve[1][1] + 1, twelve[1][1] + 2)),
        ((10, 11), (twelve[1][1] + 2, twelve[1][1] + 3))]  # fmt: skip
    check_tiles(text, sides["byte_level"], sides["digits"])


def test_a_multibyte_character_split_differently_stays_whole_in_one_group(sides):
    text = "ok 😀 日本語 done"
    teacher, student = tokenize_with_spans(sides["byte_level"], text), tokenize_with_spans(sides["metaspace"], text)
    alignment = align_tokens(teacher, student)
    emoji = "😀".encode()
    (group,) = [g for g in alignment.groups if emoji in group_text(text, teacher, g[0])]
    assert group_text(text, teacher, group[0]).strip() == emoji == group_text(text, student, group[1]).strip()
    assert [teacher.tokens[i] for i in range(*group[0])] == ["Ġ", "ð", "Ł", "ĺ", "Ģ"]  # a space and four bytes
    assert [student.tokens[i] for i in range(*group[1])] == ["▁😀"]  # one SentencePiece-style token: a 5:1 group
    (cjk,) = [g for g in alignment.groups if "日本語".encode() in group_text(text, teacher, g[0])]
    assert cjk[0][1] - cjk[0][0] == 10 and [student.tokens[i] for i in range(*cjk[1])] == ["▁日本語"]
    check_tiles(text, sides["byte_level"], sides["metaspace"])


def test_cuts_never_fall_between_tokens_that_share_a_character():
    assert cuts([(0, 1), (1, 5), (1, 5), (5, 6)]) == {0: 0, 1: 1, 5: 3, 6: 4}
    assert cuts([(0, 1), (2, 4)]) == {0: 0, 1: 1, 4: 2}  # trimmed whitespace goes to the token after it
    assert cuts([]) == {0: 0}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("ab xyz0123456789é😀日本Ω\n,.")), min_size=1, max_size=40))
def test_any_text_tiles_into_groups_covering_the_same_bytes(sides, text):
    for student in ("metaspace", "digits"):
        check_tiles(text, sides["byte_level"], sides[student])


def test_truncation_and_eos(sides):
    teacher, student = sides["byte_level"], sides["digits"]
    response = "we sold 12345 apples"
    n_t, n_s = len(teacher(response, add_special_tokens=False)["input_ids"]), len(
        student(response, add_special_tokens=False)["input_ids"])  # fmt: skip
    full = response_alignment(teacher, student, response, n_t + 1, n_s + 1)  # both kept every token and their EOS
    assert full.groups[-1] == ((n_t, n_t + 1), (n_s, n_s + 1))
    no_eos = response_alignment(teacher, student, response, n_t + 1, n_s)  # the student's EOS was cut
    assert no_eos.groups == full.groups[:-1]
    cut = response_alignment(teacher, student, response, n_t + 1, n_s - 3)  # the student lost "ples"-ish tokens
    assert cut.groups == [g for g in full.groups[:-1] if g[1][1] <= n_s - 3]
    assert all(g[0][1] <= n_t for g in cut.groups) and cut.student_tokens <= n_s - 3


class CharacterTokenizer(PythonBackend):
    """A slow (pure Python) tokenizer: one token per character, no offsets."""

    def __init__(self, **kwargs):
        self.vocab = {c: i for i, c in enumerate("<>abcdefghijklmnopqrstuvwxyz ")}
        super().__init__(unk_token="<", eos_token=">", **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, 0)

    def _convert_id_to_token(self, index: int) -> str:
        return next(token for token, i in self.vocab.items() if i == index)


def test_a_tokenizer_without_offsets_is_one_clear_error(sides):
    slow = CharacterTokenizer()
    assert slow("ab")["input_ids"] == [2, 3] and not slow.is_fast
    with pytest.raises(ConfigError, match="student tokenizer \\(CharacterTokenizer\\) has no fast backend"):
        response_alignment(sides["byte_level"], slow, "some text", 3, 3)


def test_a_bos_one_tokenizer_adds_changes_nothing(sides):
    with_bos = trained(pre_tokenizers.Metaspace(), decoders.Metaspace(), bos=True)
    response = "we sold 12345 apples"
    assert with_bos(response)["input_ids"][0] == 2 and sides["metaspace"](response)["input_ids"][0] != 2
    n_t = len(sides["byte_level"](response, add_special_tokens=False)["input_ids"])
    n_s = len(with_bos(response, add_special_tokens=False)["input_ids"])
    assert response_alignment(sides["byte_level"], with_bos, response, n_t + 1, n_s + 1) == response_alignment(
        sides["byte_level"], sides["metaspace"], response, n_t + 1, n_s + 1)  # fmt: skip


def test_shape_counts(sides):
    text = "in 2024 we sold 12345 apples"
    t, s = tokenize_with_spans(sides["byte_level"], text), tokenize_with_spans(sides["digits"], text)
    counts = align_tokens(t, s).shape_counts()
    assert counts["1:N"] + counts["N:M"] >= 2 and sum(counts.values()) == len(align_tokens(t, s).groups)


def test_pair_examples_collate_into_groups_of_the_flattened_response_rows(sides):
    """Each group's rows, read back from the batch the way the module gathers response rows, spell the same text on
    both sides; truncation and EOS as ``response_alignment`` says."""
    from lit_kd.data.alignment import encode_pair_example
    from lit_kd.data.collate import PadCollator
    from lit_kd.data.rendering import DollyRendering
    from lit_kd.losses.cross_vocab import cross_vocab_term
    from lit_kd.losses.registry import LossConfig
    from lit_kd.models.vocab_map import build_vocabulary_map

    teacher, student = sides["byte_level"], sides["digits"]
    records = [("Count.", "", "in 2024 we sold 12345 apples 😀"), ("Say hi", "to me", "hi there, naïve café"),
               ("Long one", "", "word " * 300)]  # fmt: skip  (the last is truncated at max_length 256)
    pair = DollyRendering(teacher), DollyRendering(student)
    examples = [encode_pair_example(*pair, {"instruction": i, "input": x, "output": o}, 256) for i, x, o in records]
    assert not any(e["dropped"] for e in examples) and examples[2]["truncated"]
    batch = PadCollator(teacher.pad_token_id or 0, student.pad_token_id or 0)(examples)
    rows_s = batch["labels"][:, 1:] != -100
    rows_t = batch["teacher_labels"][:, 1:] != -100
    targets_s, targets_t = batch["labels"][:, 1:][rows_s], batch["teacher_labels"][:, 1:][rows_t]
    groups = batch["groups"]
    assert len(groups) == sum(len(e["groups"]) for e in examples)
    for g in range(len(groups)):
        t = teacher.decode(targets_t[groups.teacher_start[g] : groups.teacher_end[g]], skip_special_tokens=True)
        s = student.decode(targets_s[groups.student_start[g] : groups.student_end[g]], skip_special_tokens=True)
        assert t.strip() == s.strip(), (g, t, s)
    from lit_kd.data.alignment import split_groups

    lengths = [[sum(label != -100 for label in e[key]) for e in examples] for key in ("teacher_labels", "labels")]
    assert split_groups(groups, *lengths) == [e["groups"] for e in examples]  # the batch's groups, per example again
    eos_groups = [g for g in range(len(groups)) if targets_t[groups.teacher_start[g]] == teacher.eos_token_id]
    assert len(eos_groups) == 2  # the two responses kept whole end in an EOS pair; the truncated one does not
    torch.manual_seed(0)
    z_t = torch.randn(int(rows_t.sum()), len(teacher))
    z_s = torch.randn(int(rows_s.sum()), len(student), requires_grad=True)
    vocabulary = build_vocabulary_map(teacher, student)
    term = cross_vocab_term(LossConfig(name="fkl", tau=2.0), z_s, z_t, targets_s, targets_t, groups, vocabulary)
    assert term.values.shape == (len(groups),) and torch.isfinite(term.values).all()
    term.values.mean().backward()
    assert torch.isfinite(z_s.grad).all()


def test_group_rows_move_with_the_batch_to_a_device():
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from lit_kd.data.alignment import GroupRows

    batch = {"groups": GroupRows.from_groups([((0, 1), (0, 2)), ((1, 3), (2, 3))]), "x": torch.zeros(2)}
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved["groups"], GroupRows) and moved["groups"].student_end.tolist() == [2, 3]
