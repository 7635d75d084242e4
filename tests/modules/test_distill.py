"""DistillModule: frozen teacher, student-only optimizer and checkpoints, the loss mix, LM-only mode."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_kd.data import DollyDataModule
from lit_kd.errors import ConfigError
from lit_kd.losses import LossConfig, fkl
from lit_kd.models import ModelConfig, StudentConfig, VocabularyMismatchError
from lit_kd.modules import DistillModule, WarmupCosineLR
from tests.conftest import DEMO_DATA, TINY_TOKENIZER, tiny_llama_config


def make_data(tmp_path, tokenizer, batch_size: int = 4) -> DollyDataModule:
    data = DollyDataModule(
        raw=str(DEMO_DATA), split_sizes=(40, 8, 8), max_length=256, batch_size=batch_size, cache_dir=str(tmp_path)
    )
    data.connect(tokenizer)
    return data


def make_trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_steps=4,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def test_fit_trains_the_student_only(tmp_path, tiny_model_configs):
    teacher_cfg, student_cfg = tiny_model_configs
    module = DistillModule(student=student_cfg, teacher=teacher_cfg, loss=LossConfig("fkl", tau=2.0))
    module.configure_model()
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer = make_trainer(tmp_path, enable_checkpointing=False)
    trainer.fit(module, datamodule=make_data(tmp_path, module.tokenizer))

    assert trainer.global_step == 4
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert len(changed) == len(student_before)  # every student tensor moved
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not module.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.parameters())
    optimizer = trainer.optimizers[0]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.student.parameters()}
    assert not any(id(p) in optimized for p in module.teacher.parameters())
    assert all(id(p) not in {id(q) for q in module.teacher.parameters()} for p in optimizer.state)


def test_checkpoint_holds_no_teacher_tensor(tmp_path, tiny_model_configs):
    teacher_cfg, student_cfg = tiny_model_configs
    module = DistillModule(student=student_cfg, teacher=teacher_cfg)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(tmp_path, module.tokenizer))
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state.keys() == {f"student.{k}" for k in module.student.state_dict()}
    student_numel = sum(v.numel() for v in module.student.state_dict().values())
    assert sum(v.numel() for v in state.values()) == student_numel
    assert "teacher" not in str(list(state))

    # a fresh module restores the student from it; the teacher comes from its own source
    restored = DistillModule(student=student_cfg, teacher=teacher_cfg)
    restored.configure_model()
    restored.load_state_dict(state)
    for key, value in module.student.state_dict().items():
        assert torch.equal(restored.student.state_dict()[key], value)


@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("kd_ratio", [0.0, 0.3, 1.0])
def test_loss_mixes_ce_and_kd_over_response_tokens(tmp_path, tiny_model_configs, kd_ratio, chunk_size):
    teacher_cfg, student_cfg = tiny_model_configs
    module = DistillModule(
        student=student_cfg,
        teacher=teacher_cfg,
        loss=LossConfig("fkl", tau=1.7),
        kd_ratio=kd_ratio,
        chunk_size=chunk_size,
    )
    module.configure_model()
    data = make_data(tmp_path, module.tokenizer)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    losses = module.compute_losses(batch)

    # independent computation, sequence by sequence
    ce_terms, kd_terms = [], []
    with torch.no_grad():
        s_all = module.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_all = module.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row in range(batch["input_ids"].shape[0]):
        positions = [t for t in range(batch["input_ids"].shape[1] - 1) if batch["labels"][row, t + 1] != -100]
        for t in positions:
            target = batch["labels"][row, t + 1]
            ce_terms.append(F.cross_entropy(s_all[row, t][None], target[None]))
            kd_terms.append(fkl(s_all[row, t][None], t_all[row, t][None], 1.7)[0])
    ce, kd = torch.stack(ce_terms).mean(), torch.stack(kd_terms).mean()
    assert losses.tokens == len(ce_terms)
    torch.testing.assert_close(losses.mean("lm_loss"), ce, atol=1e-5, rtol=1e-5)
    if kd_ratio == 0:
        assert losses.kd_loss is None  # no teacher forward when it has no weight
    else:
        torch.testing.assert_close(losses.mean("kd_loss"), kd, atol=1e-5, rtol=1e-5)
    expected = (1 - kd_ratio) * ce + kd_ratio * kd
    torch.testing.assert_close(losses.mean("loss").detach(), expected, atol=1e-5, rtol=1e-5)


def test_lm_only_fine_tuning_without_a_teacher(tmp_path):
    student = StudentConfig(config=tiny_llama_config(2), tokenizer=str(TINY_TOKENIZER))
    module = DistillModule(student=student, teacher=None, kd_ratio=0.0)
    trainer = make_trainer(tmp_path, max_steps=-1, max_epochs=1, limit_train_batches=2, enable_checkpointing=False)
    trainer.fit(module, datamodule=make_data(tmp_path, module.tokenizer))
    assert module.teacher is None and trainer.global_step == 2
    assert "train/kd_loss" not in trainer.callback_metrics and "val/lm_loss" in trainer.callback_metrics


def test_configuration_errors(tiny_model_configs):
    teacher_cfg, student_cfg = tiny_model_configs
    with pytest.raises(ConfigError, match=r"kd_ratio must be in \[0, 1\]"):
        DistillModule(student=student_cfg, teacher=teacher_cfg, kd_ratio=1.5)
    with pytest.raises(ConfigError, match="teacher is required"):
        DistillModule(student=StudentConfig(config=tiny_llama_config(2), tokenizer=str(TINY_TOKENIZER)))
    with pytest.raises(ConfigError, match="needs a source"):
        DistillModule(student=StudentConfig(), teacher=teacher_cfg)


def test_student_with_another_tokenizer_is_refused(tmp_path, tiny_model_configs, tiny_tokenizer):
    teacher_cfg, _ = tiny_model_configs
    tiny_tokenizer.add_tokens(["<new>"])
    tiny_tokenizer.save_pretrained(tmp_path / "other")
    student = StudentConfig(config=tiny_llama_config(2, vocab_size=1001), tokenizer=str(tmp_path / "other"))
    with pytest.raises(VocabularyMismatchError, match=r"\(1000 tokens\) and student .*\(1001 tokens\)"):
        DistillModule(student=student, teacher=teacher_cfg)


def test_student_with_a_too_small_head_is_refused(tiny_model_configs):
    teacher_cfg, _ = tiny_model_configs
    student = StudentConfig(config=tiny_llama_config(2, vocab_size=900))
    module = DistillModule(student=student, teacher=teacher_cfg)
    with pytest.raises(VocabularyMismatchError, match="has 1000 output logits and student .* has 900"):
        module.configure_model()


def test_padded_student_head_is_compared_over_the_real_vocabulary(tmp_path, tiny_model_configs):
    teacher_cfg, _ = tiny_model_configs
    module = DistillModule(student=StudentConfig(config=tiny_llama_config(2, vocab_size=1024)), teacher=teacher_cfg)
    module.configure_model()
    assert module.vocab_size == 1000
    data = make_data(tmp_path, module.tokenizer)
    data.setup("validate")
    assert torch.isfinite(module.compute_losses(next(iter(data.val_dataloader())), "val").loss)


def test_warmup_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = WarmupCosineLR(optimizer, warmup_steps=3, total_steps=13, min_lr_ratio=0.1)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert rates[3] == pytest.approx(1.0)
    assert rates[8] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert rates[13] == pytest.approx(0.1)
    with pytest.raises(ConfigError):
        WarmupCosineLR(optimizer, warmup_steps=-1)


def test_the_teacher_is_not_a_registered_child_and_follows_the_module_to_its_device(tmp_path, tiny_model_configs):
    teacher_cfg, student_cfg = tiny_model_configs
    module = DistillModule(student=student_cfg, teacher=teacher_cfg)
    module.configure_model()
    assert not any("teacher" in name for name, _ in module.named_parameters())
    assert not any(module.teacher is child for child in module.modules())
    moves = []
    original = module.teacher.to
    module.teacher.to = lambda *args, **kwargs: (
        moves.append(kwargs.get("device", args[0] if args else None)) or original(*args, **kwargs)
    )
    make_trainer(tmp_path, max_steps=1, enable_checkpointing=False).fit(
        module, datamodule=make_data(tmp_path, module.tokenizer)
    )
    assert moves and all(str(device) == "cpu" for device in moves)  # at the start of fit and of validation


def test_model_config_uses_the_teacher_dtype_option():
    with pytest.raises(ConfigError, match="dtype"):
        ModelConfig(config=tiny_llama_config(), dtype="int8")


def test_loading_a_state_of_another_architecture_is_a_clear_error(tiny_model_configs):
    from lit_kd.errors import CheckpointError

    teacher_cfg, _ = tiny_model_configs
    small = DistillModule(student=StudentConfig(layers=[0, 3]), teacher=teacher_cfg)
    big = DistillModule(student=StudentConfig(layers=[0, 1, 2]), teacher=teacher_cfg)
    small.configure_model()
    big.configure_model()
    with pytest.raises(CheckpointError, match=r"another student architecture: 9 student tensors missing"):
        big.on_load_checkpoint({"state_dict": small.state_dict()})


def test_rng_states_travel_with_the_checkpoint(tiny_model_configs):
    import random

    import numpy as np

    from lit_kd.training import Trainer
    from lit_kd.training.state import RNGStates, ScheduleHorizon

    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    for needed in (RNGStates, ScheduleHorizon):  # every lit_kd Trainer has them, whatever callbacks it is given
        assert any(isinstance(c, needed) for c in trainer.callbacks), needed
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    state = RNGStates().state_dict()
    torch.load(__import__("io").BytesIO(_saved(state)), weights_only=True)  # readable without unpickling code
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    RNGStates().load_state_dict(state)
    assert (
        torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]
    )


def _saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_checkpoints_keep_the_module_arguments_as_plain_data(tmp_path, tiny_model_configs):
    teacher_cfg, student_cfg = tiny_model_configs
    module = DistillModule(student=student_cfg, teacher=teacher_cfg, loss=LossConfig("rkl", tau=2.5))
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data(tmp_path, module.tokenizer))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    # LightningCLI would parse Lightning's `hyper_parameters` back over explicit --model.* flags on resume: kept
    # under lit_kd's own key instead, as plain data a weights-only load reads
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert "hyper_parameters" not in checkpoint
    assert checkpoint["lit_kd_hyper_parameters"]["loss"]["name"] == "rkl"
    assert checkpoint["lit_kd_hyper_parameters"]["student"]["layers"] == [0, 3]


@pytest.mark.parametrize("where", ["teacher", "student"])
def test_nonfinite_logits_raise_or_skip(tmp_path, tiny_model_configs, where):
    from lit_kd.errors import NonFiniteError

    teacher_cfg, student_cfg = tiny_model_configs

    def poison(module):
        model = (module.teacher if where == "teacher" else module.student).base_model
        original = model.forward

        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            if module.trainer.global_step == 1 and module.training:  # the second training batch
                out.last_hidden_state = out.last_hidden_state.clone()
                out.last_hidden_state[0, :, 7] = float("nan")  # every position of the first sequence
            return out

        model.forward = forward

    raising = DistillModule(student=student_cfg, teacher=teacher_cfg)
    raising.configure_model()
    poison(raising)
    with pytest.raises(
        NonFiniteError, match=rf"NaN in {where} logits, non-finite loss \(nan\) at train step 1, batch 1"
    ):
        make_trainer(tmp_path, max_steps=3, enable_checkpointing=False).fit(
            raising, datamodule=make_data(tmp_path, raising.tokenizer)
        )

    skipping = DistillModule(student=student_cfg, teacher=teacher_cfg, nonfinite="skip")
    skipping.configure_model()
    poison(skipping)
    trainer = make_trainer(tmp_path, max_steps=3, enable_checkpointing=False)
    with pytest.warns(UserWarning, match="skipping the batch"):
        trainer.fit(skipping, datamodule=make_data(tmp_path, skipping.tokenizer))
    assert skipping.nonfinite.skipped == 1 and trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in skipping.student.parameters())
    with pytest.raises(ConfigError, match="nonfinite"):
        DistillModule(student=student_cfg, teacher=teacher_cfg, nonfinite="ignore")
