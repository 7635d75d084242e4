"""On- and mixed-policy distillation: λ = 0 is the off-policy step bitwise, λ = 1 trains on the student's own
samples scored by the teacher on the sampled sequence, sampling is seeded by the run's RNG."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_kd.errors import ConfigError
from lit_kd.losses import LossConfig, fkl
from lit_kd.modules import DistillModule
from lit_kd.modules.policy import AdaptiveSchedule, PolicyConfig, PolicySampling, StudentPolicy
from tests.modules.test_distill import make_data


def make_module(tiny_model_configs, policy=None, loss=None, **kwargs) -> DistillModule:
    teacher, student = tiny_model_configs
    loss = loss or LossConfig("fkl", tau=2.0)
    module = DistillModule(student=student, teacher=teacher, loss=loss, policy=policy, **kwargs)
    module.configure_model()
    return module


def fit_three_steps(tmp_path, module) -> list[float]:
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    L.seed_everything(3)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=make_data(tmp_path, module.tokenizer))
    return losses


def test_lambda_zero_is_the_off_policy_step_bitwise(tmp_path, tiny_model_configs):
    off = make_module(tiny_model_configs)
    zero = make_module(tiny_model_configs, PolicyConfig(student_fraction=0.0))
    assert fit_three_steps(tmp_path / "a", off) == fit_three_steps(tmp_path / "b", zero)
    for (name, a), b in zip(off.student.state_dict().items(), zero.student.state_dict().values()):
        assert torch.equal(a, b), name


def first_batch(tmp_path, module):
    data = make_data(tmp_path, module.tokenizer)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_lambda_one_trains_on_the_students_samples_scored_on_the_sampled_sequence(tmp_path, tiny_model_configs):
    policy = PolicyConfig(student_fraction=1.0, sampling=PolicySampling(max_new_tokens=12))
    module = make_module(tiny_model_configs, policy)
    batch = first_batch(tmp_path, module)
    torch.manual_seed(1)
    mixed, sampled = module.student_policy.mix(batch, module.student, module.rendering)
    assert sampled == batch["input_ids"].shape[0]  # every row resampled
    eos = module.tokenizer.eos_token_id
    for row in range(sampled):
        labels, ids, mask = mixed["labels"][row], mixed["input_ids"][row], mixed["attention_mask"][row]
        start = int((batch["labels"][row] != -100).nonzero()[0])
        assert torch.equal(ids[:start], batch["input_ids"][row, :start])  # the same prompt
        assert (labels[:start] == -100).all() and (labels[mask == 0] == -100).all()  # no prompt or pad token
        response = labels[start : int(mask.sum())]
        assert torch.equal(response, ids[start : int(mask.sum())])  # exactly the sampled tokens are supervised
        assert 1 <= len(response) <= 12 and (eos not in response[:-1].tolist())  # up to and including EOS
    # the loss: FKL against the teacher's logits on the sampled sequence, at the generated positions only
    with torch.no_grad():
        sums = module.compute_losses(mixed, "train")
        student = module.student(input_ids=mixed["input_ids"], attention_mask=mixed["attention_mask"]).logits
        teacher = module.teacher(input_ids=mixed["input_ids"], attention_mask=mixed["attention_mask"]).logits
    keep = mixed["labels"][:, 1:] != -100
    expected = fkl(student[:, :-1][keep], teacher[:, :-1][keep], 2.0).sum()
    assert sums.tokens == int(keep.sum())
    torch.testing.assert_close(sums.kd_loss, expected, rtol=1e-5, atol=1e-5)
    ce = F.cross_entropy(student[:, :-1][keep], mixed["labels"][:, 1:][keep], reduction="sum")
    torch.testing.assert_close(sums.lm_loss, ce, rtol=1e-5, atol=1e-5)


def test_a_tau_rule_scores_the_students_samples_at_each_tokens_own_temperature(tmp_path, tiny_model_configs):
    """On-policy with entropy_target: the KD sum is the objective at the τ the rule gives each sampled position."""
    from lit_kd.losses.temperature import entropy_target_tau

    loss = LossConfig("fkl", tau=2.0, tau_rule="entropy_target", tau_target_entropy=2.0)
    policy = PolicyConfig(student_fraction=1.0, sampling=PolicySampling(max_new_tokens=8))
    module = make_module(tiny_model_configs, policy, loss=loss)
    batch = first_batch(tmp_path, module)
    torch.manual_seed(2)
    mixed, _ = module.student_policy.mix(batch, module.student, module.rendering)
    with torch.no_grad():
        sums = module.compute_losses(mixed, "train")
        student = module.student(input_ids=mixed["input_ids"], attention_mask=mixed["attention_mask"]).logits
        teacher = module.teacher(input_ids=mixed["input_ids"], attention_mask=mixed["attention_mask"]).logits
    keep = mixed["labels"][:, 1:] != -100
    vocab = module.vocab_size
    tau = entropy_target_tau(teacher[:, :-1][keep][:, :vocab], 2.0, 2.0, loss.tau_min, loss.tau_max)
    torch.testing.assert_close(sums.teacher_tau, tau, rtol=1e-5, atol=1e-6)
    expected = fkl(student[:, :-1][keep][:, :vocab], teacher[:, :-1][keep][:, :vocab], tau, tau).sum()
    torch.testing.assert_close(sums.kd_loss, expected, rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded_and_mixed_batches_keep_the_other_rows(tmp_path, tiny_model_configs):
    module = make_module(tiny_model_configs, PolicyConfig(0.5, PolicySampling(max_new_tokens=8)))
    batch = first_batch(tmp_path, module)
    runs = []
    for _ in range(2):
        module.student_policy.reseed(7)  # the policy draws rows and seeds from its own generator
        runs.append(module.student_policy.mix(batch, module.student, module.rendering))
    (first, k), (second, _) = runs
    assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    kept = [r for r in range(batch["input_ids"].shape[0]) if torch.equal(first["index"][r], batch["index"][r])
            and torch.equal(first["labels"][r, : int(batch["attention_mask"][r].sum())],
                            batch["labels"][r, : int(batch["attention_mask"][r].sum())])]  # fmt: skip
    assert len(kept) >= batch["input_ids"].shape[0] - k  # off-policy rows are untouched, token for token


def test_the_adaptive_schedule_raises_lambda_when_the_validation_loss_rises(tiny_model_configs):
    policy = StudentPolicy(PolicyConfig(0.0, adaptive=AdaptiveSchedule(step=0.25, max_fraction=0.5)), pad_id=0)
    for loss in (3.0, 2.5, 2.7, 2.9, 2.8, 3.5):
        policy.after_validation(loss)
    assert policy.fraction == 0.5  # rose after 2.7 and 2.9 (+0.25 each), capped at 0.5 after 3.5
    restored = StudentPolicy(PolicyConfig(0.0, adaptive=AdaptiveSchedule()), pad_id=0)
    restored.load_state_dict(policy.state_dict())
    assert restored.fraction == 0.5 and restored.previous_val_loss == 3.5


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PolicyConfig(student_fraction=1.5), r"model.policy.student_fraction must be in \[0, 1\], got 1.5"),
        (lambda: PolicyConfig(student_fraction=-0.1), r"must be in \[0, 1\], got -0.1"),
        (lambda: PolicySampling(max_new_tokens=-3), "model.policy.sampling.max_new_tokens must be >= 1, got -3"),
    ],
)
def test_bad_policy_settings(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_policy_with_a_teacher_cache_is_refused_before_any_model_loads(tiny_model_configs, monkeypatch):
    import lit_kd.models.pair as pair

    monkeypatch.setattr(pair, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model loaded")))
    teacher, student = tiny_model_configs
    with pytest.raises(ConfigError, match="only a live teacher can score"):
        DistillModule(student=student, teacher=teacher, teacher_cache="somewhere", policy=PolicyConfig(0.5))


def test_a_sample_replaces_a_conversations_last_reply_and_ends_at_the_end_of_turn_token(tmp_path):
    """Under a chat template the student samples after the last reply's prompt (the earlier turns, their labels
    kept), and a sample that stopped keeps the stop token it stopped at (end-of-turn or EOS) as its last target."""
    from lit_kd.data import DollyDataModule
    from lit_kd.models import ModelConfig, StudentConfig
    from tests.conftest import ROOT, tiny_llama_config
    from tests.data.chat_templates import CHAT_VOCAB, save_chat_tokenizer

    teacher = ModelConfig(config=tiny_llama_config(4, vocab_size=CHAT_VOCAB, max_position_embeddings=1024),
                          tokenizer=save_chat_tokenizer(tmp_path / "tokenizer"))  # fmt: skip
    policy = PolicyConfig(student_fraction=1.0, sampling=PolicySampling(max_new_tokens=12))
    module = DistillModule(student=StudentConfig(layers=[0, 3]), teacher=teacher, loss=LossConfig("fkl", tau=2.0),
                           policy=policy, prompt_format="chat_template")  # fmt: skip
    module.configure_model()
    data = DollyDataModule(raw=str(ROOT / "data" / "demo" / "conversations.jsonl"), split_sizes=(8, 4, 4),
                           batch_size=4, max_length=1024, cache_dir=str(tmp_path / "cache"),
                           prompt_format="chat_template")  # fmt: skip
    data.connect(module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(1)
    mixed, sampled = module.student_policy.mix(batch, module.student, module.rendering)
    assert sampled == 4
    stops = module.rendering.stop_ids
    for row in range(4):
        prompt, length = int(batch["prompt_lengths"][row]), int(mixed["attention_mask"][row].sum())
        assert torch.equal(mixed["input_ids"][row, :prompt], batch["input_ids"][row, :prompt])
        assert torch.equal(mixed["labels"][row, :prompt], batch["labels"][row, :prompt])  # the first reply kept
        assert (mixed["labels"][row, :prompt] != -100).sum() > 0 and int(mixed["prompt_lengths"][row]) == prompt
        reply = mixed["labels"][row, prompt:length].tolist()
        assert reply == mixed["input_ids"][row, prompt:length].tolist()
        assert all(token not in stops for token in reply[:-1])  # sampling stopped at the first stop token
        assert len(reply) == 12 or reply[-1] in stops
