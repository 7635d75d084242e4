"""The KD step across tokenizers (``model.cross_tokenizer``): identical tokenizers give today's loss and gradients,
a real pair of different tokenizers trains, and what it cannot combine with is refused before any model loads."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lit_kd.data import DollyDataModule
from lit_kd.errors import ConfigError
from lit_kd.losses import LossConfig
from lit_kd.losses.registry import OBJECTIVES
from lit_kd.models import ModelConfig, StudentConfig, VocabularyMismatchError
from lit_kd.models.tokenizer_training import save_tokenizer, train_bpe_tokenizer
from lit_kd.modules import DistillModule
from lit_kd.modules.cross_tokenizer import CrossTokenizerConfig
from lit_kd.modules.policy import PolicyConfig, PolicySampling
from tests.conftest import DEMO_DATA, TINY_TOKENIZER, tiny_llama_config

TEACHER = ModelConfig(config=tiny_llama_config(4), tokenizer=str(TINY_TOKENIZER))


@pytest.fixture(scope="module")
def student_tokenizer_dir(tmp_path_factory):
    """A SentencePiece-style tokenizer of 600 entries trained on the demo data: another vocabulary than the
    teacher's byte-level 1,000."""
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]
    texts = [row.get("instruction", "") + " " + row.get("output", row.get("response", "")) for row in rows]
    return str(save_tokenizer(train_bpe_tokenizer(texts, 600), tmp_path_factory.mktemp("student_tokenizer")))


def cross_student(tokenizer_dir: str) -> StudentConfig:
    return StudentConfig(config=tiny_llama_config(2, vocab_size=600, eos_token_id=1, pad_token_id=2),
                         tokenizer=tokenizer_dir)  # fmt: skip


def first_batch(tmp_path, module: DistillModule) -> dict:
    data = DollyDataModule(raw=str(DEMO_DATA), split_sizes=(40, 8, 8), max_length=128, batch_size=4,
                           cache_dir=str(tmp_path))  # fmt: skip
    data.connect(module.tokenizer, module.teacher_tokenizer)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_identical_tokenizers_give_todays_loss_and_gradients(tmp_path, name):
    student = StudentConfig(config=tiny_llama_config(2), tokenizer=str(TINY_TOKENIZER))
    loss = LossConfig(name, tau=2.0)
    plain = DistillModule(student=student, teacher=TEACHER, loss=loss, chunk_size=None, kd_ratio=0.7)
    cross = DistillModule(student=student, teacher=TEACHER, loss=loss, chunk_size=None, kd_ratio=0.7,
                          cross_tokenizer=CrossTokenizerConfig(uld_weight=0.0))  # fmt: skip
    for module in (plain, cross):
        module.configure_model()
    cross.student.load_state_dict(plain.student.state_dict())
    batch = first_batch(tmp_path, cross)
    assert len(batch["groups"]) == int((batch["labels"] != -100).sum())  # one group per response token
    sums = {}
    for label, module in (("plain", plain), ("cross", cross)):
        module.student.zero_grad()
        sums[label] = module.compute_losses(batch)
        sums[label].loss.backward()
    for field in ("loss", "kd_loss", "lm_loss"):
        torch.testing.assert_close(getattr(sums["cross"], field), getattr(sums["plain"], field), rtol=2e-5, atol=2e-5)
    assert sums["cross"].tokens == sums["plain"].tokens
    for (key, a), b in zip(plain.student.named_parameters(), cross.student.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=5e-6, msg=key)


def test_a_pair_of_different_tokenizers_distills(tmp_path, student_tokenizer_dir):
    module = DistillModule(student=cross_student(student_tokenizer_dir), teacher=TEACHER,
                           loss=LossConfig("fkl", tau=2.0), cross_tokenizer=CrossTokenizerConfig())  # fmt: skip
    assert module.tokenizer.eos_token == "</s>" and module.teacher_tokenizer.eos_token == "<|endoftext|>"
    assert 0.05 < module.vocabulary.matched_share < 1.0
    module.configure_model()
    batch = first_batch(tmp_path, module)
    assert batch["input_ids"].max() < 600 and batch["teacher_input_ids"].shape[0] == batch["input_ids"].shape[0]
    assert 0 < len(batch["groups"]) < int((batch["labels"] != -100).sum())  # groups of several student tokens
    optimizer = torch.optim.AdamW(module.student.parameters(), lr=1e-2)
    kd = []
    for _ in range(12):  # the same batch: the KD term must fall
        optimizer.zero_grad()
        sums = module.compute_losses(batch, diagnostics=True)
        (sums.loss / sums.tokens).backward()
        optimizer.step()
        kd.append(float(sums.kd_loss) / sums.tokens)
        assert 0 < float(sums.diagnostics["matched_mass"]) <= 1
    assert kd[-1] < 0.8 * kd[0], kd
    assert module.teacher.lm_head.weight.grad is None


def test_a_mixed_policy_cross_tokenizer_fit_runs_with_lightning_and_logs_the_matched_mass(tmp_path,
                                                                                          student_tokenizer_dir):
    policy = PolicyConfig(student_fraction=0.5, sampling=PolicySampling(max_new_tokens=8))
    module = DistillModule(student=cross_student(student_tokenizer_dir), teacher=TEACHER, policy=policy,
                           loss=LossConfig("rkl", tau=1.5), cross_tokenizer=CrossTokenizerConfig())  # fmt: skip
    data = DollyDataModule(raw=str(DEMO_DATA), split_sizes=(40, 8, 8), max_length=128, batch_size=4,
                           cache_dir=str(tmp_path))  # fmt: skip
    data.connect(module.tokenizer, module.teacher_tokenizer)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, logger=False, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, datamodule=data)
    metrics = dict(trainer.callback_metrics)
    assert trainer.global_step == 3
    assert torch.isfinite(metrics["train/kd_loss"]) and 0 < float(metrics["diag/matched_mass"]) <= 1
    assert float(metrics["train/sampled_rows"]) >= 1
    (validated,) = trainer.validate(module, datamodule=data, verbose=False)
    assert validated["val/kd_loss"] > 0 and validated["val/lm_loss"] > 0


def test_tokenization_is_cached_per_tokenizer_pair(tmp_path, student_tokenizer_dir):
    module = DistillModule(student=cross_student(student_tokenizer_dir), teacher=TEACHER,
                           cross_tokenizer=CrossTokenizerConfig())  # fmt: skip
    data = DollyDataModule(raw=str(DEMO_DATA), split_sizes=(40, 8, 8), max_length=128, cache_dir=str(tmp_path))
    data.connect(module.tokenizer)
    data.setup("fit")
    assert "groups" not in data.splits["train"].dataset[0]
    data.connect(module.tokenizer, module.teacher_tokenizer)  # another tokenization: not the cached one
    data.setup("fit")
    example = data.splits["train"].dataset[0]
    assert example["teacher_input_ids"] and example["groups"]
    assert len(list(tmp_path.glob("*.arrow"))) == 6  # every split, for each tokenization


def test_different_tokenizers_without_cross_tokenizer_name_the_option(student_tokenizer_dir):
    with pytest.raises(VocabularyMismatchError, match="model.cross_tokenizer"):
        DistillModule(student=cross_student(student_tokenizer_dir), teacher=TEACHER)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"loss": LossConfig("fkl", tau_rule="logit_standardization")}, "tau_rule"),
        ({"teacher": None, "kd_ratio": 0.0}, "needs model.teacher"),
        ({"student": StudentConfig(layers=[0, 3])}, "shares the teacher's vocabulary"),
    ],
)
def test_what_cross_tokenizer_cannot_combine_with_is_one_error(student_tokenizer_dir, overrides, match):
    arguments = dict(student=cross_student(student_tokenizer_dir), teacher=TEACHER,
                     cross_tokenizer=CrossTokenizerConfig()) | overrides  # fmt: skip
    with pytest.raises(ConfigError, match=match):
        DistillModule(**arguments)


@pytest.mark.parametrize("field, value", [("uld_weight", -1.0), ("min_matched_share", 0.0), ("min_matched_share", 2)])
def test_bad_cross_tokenizer_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        CrossTokenizerConfig(**{field: value})


def test_a_student_cut_from_the_teacher_gets_its_own_vocabulary_started_from_the_teachers(student_tokenizer_dir):
    student = StudentConfig(layers=[0, 3], tokenizer=student_tokenizer_dir)
    module = DistillModule(student=student, teacher=TEACHER, cross_tokenizer=CrossTokenizerConfig())
    module.configure_model()
    teacher_rows = module.teacher.get_input_embeddings().weight
    teacher_head = module.teacher.get_output_embeddings().weight
    rows = module.student.get_input_embeddings().weight
    assert rows.shape == (600, teacher_rows.shape[1]) and module.student.get_output_embeddings().weight.shape[0] == 600
    assert module.student.config.eos_token_id == module.tokenizer.eos_token_id == 1
    vocabulary = module.vocabulary
    for t, s in zip(vocabulary.teacher_ids.tolist(), vocabulary.student_ids.tolist()):  # matched: the teacher's row
        assert torch.equal(rows[s], teacher_rows[t])
        assert torch.equal(module.student.get_output_embeddings().weight[s], teacher_head[t])
    matched = set(vocabulary.student_ids.tolist())
    names = module.tokenizer.convert_ids_to_tokens(list(range(600)))
    token = next(i for i in range(3, 600) if i not in matched and not names[i].startswith("<0x"))
    text = module.tokenizer.convert_tokens_to_string([module.tokenizer.convert_ids_to_tokens(token)])
    pieces = module.teacher_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1  # an entry the teacher has no equal of: the mean of the rows of its pieces
    torch.testing.assert_close(rows[token], teacher_rows[pieces].mean(0))
    torch.testing.assert_close(rows[2], teacher_rows.mean(0))  # <pad>: no text, the mean of every row


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_student_samples_are_encoded_for_both_sides_and_aligned_again(tmp_path, student_tokenizer_dir, fraction):
    policy = PolicyConfig(student_fraction=fraction, sampling=PolicySampling(max_new_tokens=12))
    module = DistillModule(student=cross_student(student_tokenizer_dir), teacher=TEACHER, policy=policy,
                           max_length=128, cross_tokenizer=CrossTokenizerConfig())  # fmt: skip
    module.configure_model()
    batch = first_batch(tmp_path, module)
    mixed, sampled = module.student_policy.mix(batch, module.student, module.rendering, module.teacher_rendering)
    assert sampled == int(fraction * 4)
    rows = mixed["groups"]
    student_ids = mixed["labels"][:, 1:][mixed["labels"][:, 1:] != -100]
    teacher_ids = mixed["teacher_labels"][:, 1:][mixed["teacher_labels"][:, 1:] != -100]
    assert int(rows.student_end[-1]) <= student_ids.numel() and int(rows.teacher_end[-1]) <= teacher_ids.numel()
    for g in range(len(rows)):  # every group spells the same text on both sides
        s = student_ids[rows.student_start[g] : rows.student_end[g]].tolist()
        t = teacher_ids[rows.teacher_start[g] : rows.teacher_end[g]].tolist()
        if s == [module.tokenizer.eos_token_id]:
            assert t == [module.teacher_tokenizer.eos_token_id]
        else:
            assert module.tokenizer.decode(s).strip() == module.teacher_tokenizer.decode(t).strip(), (s, t)
    kept = [r for r in range(4) if torch.equal(mixed["labels"][r], batch["labels"][r])]
    width = mixed["teacher_input_ids"].shape[1]
    for r in kept:  # an off-policy row keeps its teacher tokens
        assert torch.equal(mixed["teacher_input_ids"][r], batch["teacher_input_ids"][r][:width])
    sums = module.compute_losses(mixed)
    assert torch.isfinite(sums.loss) and sums.tokens == student_ids.numel()


def test_a_teacher_cache_of_a_cross_tokenizer_pair_equals_the_live_teacher_and_names_both_tokenizers(
    tmp_path, student_tokenizer_dir
):
    from lit_kd.errors import CacheError
    from lit_kd.teacher import TeacherCache
    from lit_kd.teacher.build import write_teacher_cache
    from lit_kd.teacher.cache import cache_key

    arguments = dict(student=StudentConfig(layers=[0, 3], tokenizer=student_tokenizer_dir), teacher=TEACHER,
                     loss=LossConfig("js", tau=2.0), kd_ratio=0.8, cross_tokenizer=CrossTokenizerConfig())  # fmt: skip
    live = DistillModule(**arguments)
    live.configure_model()
    data = DollyDataModule(raw=str(DEMO_DATA), split_sizes=(24, 8, 8), max_length=128, batch_size=4,
                           cache_dir=str(tmp_path / "tokenized"))  # fmt: skip
    data.connect(live.tokenizer, live.teacher_tokenizer)
    path = write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "cache")
    cache = TeacherCache.open(path)
    assert "+" in cache.key.tokenizer  # the student's and the teacher's tokenizers
    cached = DistillModule(**arguments, teacher_cache=str(path))
    cached.teacher_cache = cache
    cached.configure_model()
    assert cached.teacher is None
    cached.student.load_state_dict(live.student.state_dict())
    for split, loader in (("train", data.train_dataloader()), ("val", data.val_dataloader())):
        batch = next(iter(loader))
        results = []
        for module in (live, cached):
            module.student.zero_grad()
            sums = module.compute_losses(batch, split)
            sums.loss.backward()
            results.append((sums.loss.detach(), [p.grad.clone() for p in module.student.parameters()]))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
        for a, b in zip(results[0][1], results[1][1]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    records = data.load_split_records()
    same_tokenizer_key = cache_key(live.teacher_config, live.tokenizer, records, data.max_length, data.fingerprints())
    with pytest.raises(CacheError, match="tokenizer"):
        cache.check(same_tokenizer_key)


@pytest.mark.parametrize("name, kd_ratio, chunk_size", [("fkl", 1.0, 7), ("rkl", 0.6, 3), ("js", 1.0, 512),
                                                        ("akl", 0.5, 5), ("drkl", 1.0, 4), ("ab", 0.0, 6)])  # fmt: skip
def test_the_chunked_cross_tokenizer_step_equals_the_full_logits_one(tmp_path, student_tokenizer_dir, name, kd_ratio,
                                                                     chunk_size):
    arguments = dict(student=StudentConfig(layers=[0, 3], tokenizer=student_tokenizer_dir), teacher=TEACHER,
                     loss=LossConfig(name, tau=2.0, tau_squared_scaling=name == "js"), kd_ratio=kd_ratio,
                     cross_tokenizer=CrossTokenizerConfig(uld_weight=0.5))  # fmt: skip
    full, chunked = DistillModule(**arguments, chunk_size=None), DistillModule(**arguments, chunk_size=chunk_size)
    for module in (full, chunked):  # in float64: the two paths agree to rounding
        module.configure_model()
        module.student.double()
        module.teacher.double()
    batch = first_batch(tmp_path, full)
    results = []
    for module in (full, chunked):
        module.student.zero_grad()
        sums = module.compute_losses(batch, diagnostics=True)
        sums.loss.backward()
        results.append((sums, [p.grad.clone() for p in module.student.parameters()]))
    (a, grads_a), (b, grads_b) = results
    for field in ("loss", "lm_loss", "kd_loss"):
        if getattr(a, field) is None:
            assert getattr(b, field) is None
            continue
        torch.testing.assert_close(getattr(b, field).detach(), getattr(a, field).detach(), rtol=1e-10, atol=1e-10)
    if kd_ratio:
        torch.testing.assert_close(b.diagnostics["matched_mass"], a.diagnostics["matched_mass"])
    for x, y in zip(grads_a, grads_b):
        assert x.dtype == torch.float64
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-12)


def test_sequence_level_data_is_sampled_and_decoded_with_the_teachers_own_tokenizer(tmp_path, student_tokenizer_dir,
                                                                                    monkeypatch):
    import lit_kd.cli.generate_data as generate_data
    from lit_kd.cli.main import main
    from lit_kd.data import load_records
    from tests.conftest import ROOT

    used, original = [], generate_data.generate_responses

    def spy(model, rendering, *args, **kwargs):
        used.append(rendering.tokenizer)
        return original(model, rendering, *args, **kwargs)

    monkeypatch.setattr(generate_data, "generate_responses", spy)
    main(["generate-data", "--config", str(ROOT / "configs" / "tiny.yaml"), "--model.teacher.tokenizer",
          str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA), "--data.split_sizes", "[6, 2, 2]", "--data.cache_dir",
          str(tmp_path / "cache"), "--model.cross_tokenizer", "{}", "--model.student.tokenizer",
          student_tokenizer_dir, "--out", str(tmp_path / "seqkd"), "--sampling.max_new_tokens", "6"])  # fmt: skip
    assert used and all(tokenizer.eos_token == "<|endoftext|>" and len(tokenizer) == 1000 for tokenizer in used)
    assert len(load_records(str(tmp_path / "seqkd" / "train.jsonl"))) == 6


def test_two_chat_templates_align_over_the_assistant_content_only(tmp_path, student_tokenizer_dir):
    """A ChatML teacher (byte-level BPE) and a Llama-3-style student (its own SentencePiece-style vocabulary): each
    side renders a multi-turn conversation with its own template, and the groups cover exactly each reply's
    content (the same bytes on both sides) and its end-of-turn tokens, never template text."""
    from transformers import AutoTokenizer

    from lit_kd.data.alignment import encode_pair_example
    from lit_kd.data.rendering import make_rendering
    from tests.data.chat_templates import FAMILIES, LLAMA3, chat_tokenizer

    teacher = make_rendering(chat_tokenizer("chatml"), "chat_template", role="the teacher's")
    student_tokenizer = AutoTokenizer.from_pretrained(student_tokenizer_dir)
    student_tokenizer.add_special_tokens(FAMILIES["llama3"][1])
    student_tokenizer.chat_template = LLAMA3
    student = make_rendering(student_tokenizer, "chat_template")
    replies = ["Seven is prime, and so is 11.", "Naïve café owners sold 12345 croissants 😀."]
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name primes."},
                           {"role": "assistant", "content": replies[0]}, {"role": "user", "content": "And sales?"},
                           {"role": "assistant", "content": replies[1]}], "output": replies[1]}  # fmt: skip
    example = encode_pair_example(teacher, student, record, 512)
    assert not example["dropped"] and not example["truncated"]

    def rows(ids: list[int], labels: list[int]) -> list[int]:  # each side's response rows: its supervised tokens
        return [token for token, label in zip(ids[1:], labels[1:]) if label != -100]

    teacher_rows = rows(example["teacher_input_ids"], example["teacher_labels"])
    student_rows = rows(example["input_ids"], example["labels"])
    texts = []
    for t0, t1, s0, s1 in example["groups"]:
        t_text = teacher.tokenizer.decode(teacher_rows[t0:t1])
        s_text = student_tokenizer.decode(student_rows[s0:s1])
        if t_text == "<|im_end|>":  # the end-of-turn tokens: one group, each side its own
            assert s_text == "<|eot_id|>"
            texts.append("<end>")
        else:
            assert t_text.encode() == s_text.encode() or t_text.strip() == s_text.strip(), (t_text, s_text)
            texts.append(t_text)
    assert "".join(texts) == f"{replies[0]}<end>{replies[1]}<end>"
    for template_text in ("system", "user", "assistant", "Be brief", "Name primes"):
        assert template_text not in "".join(texts)


def test_student_samples_replace_the_last_reply_of_conversations_under_two_chat_templates(tmp_path,
                                                                                         student_tokenizer_dir):
    """On-policy across tokenizers and templates: each sampled row keeps its conversation's first reply (labels and
    groups) and takes the student's sample as its last, encoded and aligned for both sides, each ending with its own
    end-of-turn token when the sample ended."""
    from transformers import AutoTokenizer

    from tests.data.chat_templates import CHAT_VOCAB, FAMILIES, LLAMA3, save_chat_tokenizer

    student_tokenizer = AutoTokenizer.from_pretrained(student_tokenizer_dir)
    student_tokenizer.add_special_tokens(FAMILIES["llama3"][1])
    student_tokenizer.chat_template = LLAMA3
    student_tokenizer.save_pretrained(tmp_path / "student")
    teacher = ModelConfig(config=tiny_llama_config(4, vocab_size=CHAT_VOCAB, max_position_embeddings=1024),
                          tokenizer=save_chat_tokenizer(tmp_path / "teacher"))  # fmt: skip
    student = StudentConfig(config=tiny_llama_config(2, vocab_size=608, eos_token_id=1, pad_token_id=2,
                                                     max_position_embeddings=1024), tokenizer=str(tmp_path / "student"))
    policy = PolicyConfig(student_fraction=1.0, sampling=PolicySampling(max_new_tokens=12))
    module = DistillModule(student=student, teacher=teacher, policy=policy, max_length=1024,
                           cross_tokenizer=CrossTokenizerConfig(), prompt_format="chat_template")  # fmt: skip
    module.configure_model()
    data = DollyDataModule(raw=str(DEMO_DATA.parent / "conversations.jsonl"), split_sizes=(16, 4, 4), max_length=1024,
                           batch_size=4, cache_dir=str(tmp_path / "cache"), prompt_format="chat_template")  # fmt: skip
    data.connect(module.tokenizer, module.teacher_tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    mixed, sampled = module.student_policy.mix(batch, module.student, module.rendering, module.teacher_rendering)
    assert sampled == 4
    ends = {"<|im_end|>": "<|eot_id|>"}
    for r in range(4):
        prompt = int(batch["prompt_lengths"][r])
        assert torch.equal(mixed["labels"][r, :prompt], batch["labels"][r, :prompt])  # the first reply is kept
        assert (mixed["labels"][r, :prompt] != -100).any()
    rows = mixed["groups"]
    student_ids = mixed["labels"][:, 1:][mixed["labels"][:, 1:] != -100]
    teacher_ids = mixed["teacher_labels"][:, 1:][mixed["teacher_labels"][:, 1:] != -100]
    ended = 0
    for g in range(len(rows)):  # every group spells the same text on both sides, or is a pair of end tokens
        s = module.tokenizer.decode(student_ids[rows.student_start[g] : rows.student_end[g]].tolist())
        t = module.teacher_tokenizer.decode(teacher_ids[rows.teacher_start[g] : rows.teacher_end[g]].tolist())
        if t in ends:
            assert s == ends[t]
            ended += 1
        else:
            assert s.strip() == t.strip(), (s, t)
    assert ended >= 4  # at least every first reply's end-of-turn pair
    sums = module.compute_losses(mixed)
    assert torch.isfinite(sums.loss) and sums.tokens == student_ids.numel()
