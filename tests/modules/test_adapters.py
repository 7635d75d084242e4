"""Adapters on a frozen student (``model.student.peft``, through peft): only the adapters train, the chunked loss
takes no head gradient, checkpoints hold the adapters and the base's identity, export merges them or writes them
apart, and what the config alone shows is refused before any weights load."""

from __future__ import annotations

import pytest
import torch

from lit_kd.errors import CheckpointError, ConfigError
from lit_kd.losses import LossConfig
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.adapters import AdapterConfig
from lit_kd.modules import DistillModule
from tests.conftest import TINY_TOKENIZER, tiny_llama_config
from tests.modules.test_distill import make_data

TEACHER = ModelConfig(config=tiny_llama_config(4), tokenizer=str(TINY_TOKENIZER))


def lora_module(peft: AdapterConfig | None = None, student: StudentConfig | None = None, **kwargs) -> DistillModule:
    student = student or StudentConfig(layers=[0, 3], peft=peft or AdapterConfig(r=4, alpha=8.0))
    module = DistillModule(student=student, teacher=TEACHER, loss=LossConfig("fkl", tau=2.0), **kwargs)
    module.configure_model()
    return module


def first_batch(tmp_path, module):
    data = make_data(tmp_path, module.tokenizer)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_only_the_adapters_train_and_the_optimizer_sees_them_alone():
    module = lora_module()
    trainable = {n for n, p in module.student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = module.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.student.parameters() if p.requires_grad}
    head = module.student.get_output_embeddings()
    assert not head.weight.requires_grad


@pytest.mark.parametrize("name", ["fkl", "js", "akl"])  # a fused kernel, and the autograd path (AKL sorts)
def test_the_chunked_loss_takes_no_head_gradient_and_equals_the_full_logits_path(tmp_path, monkeypatch, name):
    import lit_kd.losses.chunked as chunked

    loss = LossConfig(name, tau=2.0)
    chunked_module = lora_module(chunk_size=7, kd_ratio=0.6)
    full_module = lora_module(chunk_size=None, kd_ratio=0.6)
    for module in (chunked_module, full_module):
        module.loss_config = loss
    full_module.student.load_state_dict(chunked_module.student.state_dict())
    with torch.no_grad():  # B starts at zero: give the adapters weight, so their gradients are not trivial
        for (n, a), b in zip(chunked_module.student.named_parameters(), full_module.student.parameters()):
            if "lora_B" in n:
                a.normal_(0, 0.1)
                b.copy_(a)
    seen = []
    original = chunked.accumulate_gradients
    monkeypatch.setattr(chunked, "accumulate_gradients", lambda *a: seen.append(a[3][1]) or original(*a))
    batch = first_batch(tmp_path, chunked_module)
    results = []
    for module in (chunked_module, full_module):
        sums = module.compute_losses(batch)
        (sums.loss / sums.tokens).backward()
        results.append((sums, {n: p.grad.clone() for n, p in module.student.named_parameters() if p.requires_grad}))
        assert module.student.get_output_embeddings().weight.grad is None
    (a, grads_a), (b, grads_b) = results
    assert float(a.mean("loss")) == pytest.approx(float(b.mean("loss")), rel=1e-5)
    for n in grads_b:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-4, atol=1e-6)
    if name != "akl":  # the fused kernels passed no head gradient buffer: no [V, d] matmul for it
        assert seen and all(grad is None for grad in seen)


def test_a_student_with_its_own_source_takes_adapters_too(tmp_path):
    student = StudentConfig(config=tiny_llama_config(2), tokenizer=str(TINY_TOKENIZER),
                            peft=AdapterConfig(r=2, target_modules=["q_proj", "v_proj"], method="dora"))  # fmt: skip
    module = lora_module(student=student)
    trainable = [n for n, p in module.student.named_parameters() if p.requires_grad]
    assert trainable and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in trainable)
    assert any("magnitude" in n for n in trainable)  # DoRA's learned magnitude
    sums = module.compute_losses(first_batch(tmp_path, module))
    assert torch.isfinite(sums.loss)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"r": 0}, "peft.r must be a positive integer, got 0"),
        ({"alpha": -1.0}, "peft.alpha must be finite and > 0"),
        ({"dropout": 1.0}, r"peft.dropout must be in \[0, 1\)"),
        ({"target_modules": []}, "must name at least one module"),
    ],
)
def test_bad_adapter_settings_are_one_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        AdapterConfig(**settings)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"target_modules": ["c_attn"]}, r"target_modules \['c_attn'\] match no linear layer of the student "
                                          r"\(LlamaForCausalLM\); its linear layers are named down_proj, gate_proj"),
        ({"modules_to_save": ["lm_head"]}, "'lm_head' is the student's input embeddings or LM head"),
        ({"modules_to_save": ["embed_tokens"]}, "'embed_tokens' is the student's input embeddings or LM head"),
        ({"modules_to_save": ["nothing"]}, "'nothing' names no module of the student"),
    ],
)
def test_what_the_config_shows_is_refused_before_any_weights_load(monkeypatch, settings, message):
    import lit_kd.models.pair as pair

    monkeypatch.setattr(pair, "load_model", lambda *a, **k: pytest.fail("weights loaded before the check"))
    with pytest.raises(ConfigError, match=message):
        DistillModule(student=StudentConfig(layers=[0, 3], peft=AdapterConfig(**settings)), teacher=TEACHER)


def test_a_cut_cross_tokenizer_student_with_adapters_is_one_error(tmp_path):
    from lit_kd.modules.cross_tokenizer import CrossTokenizerConfig

    student = StudentConfig(layers=[0, 3], tokenizer=str(TINY_TOKENIZER), peft=AdapterConfig())
    with pytest.raises(ConfigError, match="model.cross_tokenizer with model.student.peft: a student cut from"):
        DistillModule(student=student, teacher=TEACHER, cross_tokenizer=CrossTokenizerConfig())


@pytest.fixture
def trained_checkpoint(tmp_path):
    """A LoRA student's checkpoint after three optimizer steps (its adapters moved)."""
    import lightning as L

    module = lora_module()
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False)  # fmt: skip
    trainer.fit(module, datamodule=make_data(tmp_path, module.tokenizer))
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    return module, path


def test_a_checkpoint_holds_the_adapters_and_the_bases_identity_and_evaluate_rebuilds_it(trained_checkpoint):
    from lit_kd.modules.loading import model_from_source
    from lit_kd.modules.state import ADAPTER_BASE_KEY

    module, path = trained_checkpoint
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    trainable = {f"student.{n}" for n, p in module.student.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable  # no copy of the frozen base
    assert checkpoint[ADAPTER_BASE_KEY]["layers"] == [0, 3]
    rebuilt, rendering, _ = model_from_source(str(path))
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(rebuilt(input_ids=probe).logits, module.student(input_ids=probe).logits)


def test_adapters_trained_on_another_base_are_refused(trained_checkpoint, monkeypatch):
    import lit_kd.modules.state as state
    from lit_kd.modules.loading import module_from_checkpoint

    _, path = trained_checkpoint
    other = dict(tiny_llama_config(4), initializer_range=0.5)  # the same architecture, other weights
    real = state.adapter_base
    monkeypatch.setattr(state, "adapter_base",
                        lambda module: {**real(module), "source": {**real(module)["source"], "config": other}})
    with pytest.raises(CheckpointError, match="adapters were trained on another base"):
        module_from_checkpoint(str(path))


@pytest.mark.parametrize("adapters", ["merged", "separate"])
def test_export_merges_the_adapters_or_writes_them_beside_their_base(trained_checkpoint, tmp_path, adapters):
    from transformers import AutoModelForCausalLM

    from lit_kd.cli import main
    from lit_kd.modules.loading import model_from_source

    module, path = trained_checkpoint
    out = tmp_path / f"export-{adapters}"
    main(["export", "--ckpt", str(path), "--out", str(out), "--adapters", adapters])
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    expected = module.student(input_ids=probe).logits
    if adapters == "merged":
        assert not (out / "adapter_config.json").exists()
        model = AutoModelForCausalLM.from_pretrained(out)
    else:
        from peft import PeftModel

        assert (out / "adapter_config.json").is_file() and (out / "base" / "config.json").is_file()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out)
        evaluated, _, _ = model_from_source(str(out))  # evaluate reads the adapter directory and its base
        torch.testing.assert_close(evaluated(input_ids=probe).logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(input_ids=probe).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def teacher_with_adapter(tmp_path):
    """A tiny teacher saved as a Hugging Face directory, and a LoRA adapter trained on it (B not zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from lit_kd.models import load_model

    load_model(ModelConfig(config=tiny_llama_config(4))).save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(TINY_TOKENIZER).save_pretrained(tmp_path / "base")
    base = load_model(ModelConfig(path=str(tmp_path / "base")))  # the adapter's config names this directory
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    return tmp_path / "base", tmp_path / "adapter", adapted


def test_a_teacher_given_as_a_base_and_an_adapter_is_merged_once_and_its_identity_covers_the_adapter(
    teacher_with_adapter,
):
    from safetensors.torch import load_file, save_file

    from lit_kd.teacher.cache import teacher_identity

    base, adapter, adapted = teacher_with_adapter
    config = ModelConfig(path=str(base), adapter=str(adapter))
    module = DistillModule(student=StudentConfig(layers=[0, 3]), teacher=config)
    module.configure_model()
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(module.teacher(input_ids=probe).logits, adapted(input_ids=probe).logits)
    assert not any("lora_" in name for name, _ in module.teacher.named_parameters())  # merged: a plain model
    before = teacher_identity(config)
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 2 for k, v in tensors.items()}, weights)  # the same files, other adapter weights
    after = teacher_identity(config)
    assert before["adapter"] != after["adapter"] and before["files"] == after["files"]


def test_a_missing_adapter_or_one_of_another_base_is_one_error(teacher_with_adapter, tmp_path):
    from lit_kd.models import ModelLoadError, load_model

    base, adapter, _ = teacher_with_adapter
    with pytest.raises(ModelLoadError, match="model.teacher.adapter: adapter directory not found"):
        DistillModule(student=StudentConfig(layers=[0, 3]),
                      teacher=ModelConfig(path=str(base), adapter=str(tmp_path / "nothing")))  # fmt: skip
    other = load_model(ModelConfig(config=tiny_llama_config(4)))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ModelLoadError, match=f"was trained on {base}, not on {tmp_path / 'other'}"):
        load_model(ModelConfig(path=str(tmp_path / "other"), adapter=str(adapter)), "teacher")
    wider = ModelConfig(config=tiny_llama_config(4, hidden_size=64, intermediate_size=96), adapter=str(adapter))
    with pytest.raises(ModelLoadError, match="does not fit random llama from config"):
        load_model(wider, "teacher")


@pytest.mark.parametrize(
    "student, cuda, message",
    [
        (StudentConfig(layers=[0, 3]), True, "needs a student loaded from its own model.student.path, with no"),
        (StudentConfig(path="some/student"), False, r"quantize: nf4 \(QLoRA's 4-bit base\) needs a CUDA device"),
        (StudentConfig(path="some/student"), True, r"needs bitsandbytes, which is not installed: pip install"),
    ],
)
def test_qlora_names_what_it_needs_before_any_weights_load(monkeypatch, student, cuda, message):
    import importlib.util

    import lit_kd.models.pair as pair

    monkeypatch.setattr(pair, "load_model", lambda *a, **k: pytest.fail("weights loaded before the check"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "bitsandbytes" else real_find_spec(n, *a))  # fmt: skip
    student.peft = AdapterConfig(quantize="nf4")
    with pytest.raises(ConfigError, match=message):
        pair.check_models(student, TEACHER)


def test_a_qlora_checkpoint_is_read_onto_the_full_precision_base(trained_checkpoint, tmp_path):
    """evaluate and export rebuild a QLoRA run's student unquantized (anywhere, no CUDA) and read its adapters onto
    it: the same tensors, by the same names, as over the 4-bit base."""
    from lit_kd.modules.loading import HPARAMS_KEY, model_from_source

    module, path = trained_checkpoint
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert checkpoint[HPARAMS_KEY]["student"]["peft"]["quantize"] is None
    checkpoint[HPARAMS_KEY]["student"]["peft"]["quantize"] = "nf4"  # as a QLoRA run stores it
    qlora_path = tmp_path / "qlora.ckpt"
    torch.save(checkpoint, qlora_path)
    rebuilt, _, _ = model_from_source(str(qlora_path))
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(rebuilt(input_ids=probe).logits, module.student(input_ids=probe).logits)
