"""QLoRA on CUDA (``model.student.peft.quantize``): the student's base loads in 4 bits (bitsandbytes), its adapters
train, its checkpoint holds the adapters alone, and export merges them into the full-precision base. Run by
``benchmarks/gpu_check.sh`` (step 4); skipped without CUDA or bitsandbytes (``pip install 'lit_kd[qlora]'``).
Without CUDA, ``tests/modules/test_adapters.py`` checks the one-line refusals and the full-precision rebuild."""

from __future__ import annotations

import pytest
import torch

from lit_kd.losses import LossConfig
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.adapters import AdapterConfig
from lit_kd.modules import DistillModule
from tests.conftest import TINY_TOKENIZER, tiny_llama_config
from tests.modules.test_distill import make_data

pytestmark = pytest.mark.gpu


@pytest.fixture
def student_dir(tmp_path):
    """A student saved as a Hugging Face directory (the teacher's tokenizer), its width a multiple of the 4-bit
    blocks (64)."""
    from transformers import AutoTokenizer

    from lit_kd.models import load_model

    student = load_model(ModelConfig(config=tiny_llama_config(2, hidden_size=256, intermediate_size=512)))
    student.save_pretrained(tmp_path / "student")
    AutoTokenizer.from_pretrained(TINY_TOKENIZER).save_pretrained(tmp_path / "student")
    return tmp_path / "student"


def qlora_module(student_dir, quantize="nf4") -> DistillModule:
    peft = AdapterConfig(r=4, alpha=8.0, quantize=quantize)
    student = StudentConfig(path=str(student_dir), dtype="bfloat16", peft=peft)
    teacher = ModelConfig(config=tiny_llama_config(4), tokenizer=str(TINY_TOKENIZER))
    module = DistillModule(student=student, teacher=teacher, loss=LossConfig("fkl", tau=2.0), chunk_size=16)
    module.configure_model()
    return module


def test_a_qlora_student_trains_its_adapters_on_a_4bit_base_and_exports_them_merged(student_dir, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    import lightning as L
    from transformers import AutoModelForCausalLM

    from lit_kd.cli import main
    from lit_kd.modules.loading import model_from_source

    torch.cuda.reset_peak_memory_stats()
    before_load = torch.cuda.memory_allocated()
    module = qlora_module(student_dir)
    quantized_bytes = torch.cuda.memory_allocated() - before_load
    full_bytes = sum(p.numel() * 2 for p in AutoModelForCausalLM.from_pretrained(student_dir).parameters())  # bf16
    print(f"student base on CUDA: 4-bit {quantized_bytes / 2**20:.2f} MiB, bfloat16 {full_bytes / 2**20:.2f} MiB")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.student.modules())
    assert quantized_bytes < full_bytes
    trainable = {n: p.detach().clone() for n, p in module.student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    trainer = L.Trainer(accelerator="gpu", devices=1, max_steps=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        enable_checkpointing=False)  # fmt: skip
    trainer.fit(module, datamodule=make_data(tmp_path, module.tokenizer))
    after = dict(module.student.named_parameters())
    assert any(not torch.equal(after[n].detach(), p) for n, p in trainable.items() if "lora_B" in n)

    path = tmp_path / "qlora.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert set(checkpoint["state_dict"]) == {f"student.{n}" for n in trainable}  # no copy of the 4-bit base

    main(["export", "--ckpt", str(path), "--out", str(tmp_path / "export")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    assert not hasattr(exported.config, "quantization_config")  # a plain full-precision model
    rebuilt, _, _ = model_from_source(str(path))  # the full-precision base with the trained adapters
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=probe).logits, rebuilt.float()(input_ids=probe).logits,
                                   rtol=2e-2, atol=2e-2)  # fmt: skip
