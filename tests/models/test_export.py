"""Export: a Hugging Face directory that transformers alone loads and generates with; nothing overwritten."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.export import ExportError, export_hf
from lit_kd.modules import DistillModule
from tests.conftest import TINY_TOKENIZER, tiny_llama_config


def test_exported_student_loads_and_generates_without_lit_kd(tmp_path):
    module = DistillModule(
        student=StudentConfig(layers=[0, 2]),
        teacher=ModelConfig(config=tiny_llama_config(3), tokenizer=str(TINY_TOKENIZER)),
    )
    module.configure_model()
    previous = os.umask(0o022)
    try:
        target = export_hf(module.student, module.tokenizer, tmp_path / "student")
    finally:
        os.umask(previous)
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    # readable by others, as the umask allows: the export folder and every file in it
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()} == {0o644}
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = module.student(input_ids=ids).logits[0, -1].argmax().item()
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(target)!r})
        tokenizer = AutoTokenizer.from_pretrained({str(target)!r})
        out = model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
        assert out.shape[1] > 1
        print(model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits[0, -1].argmax().item())
        assert "lit_kd" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) == expected


def test_an_existing_export_is_never_overwritten(tmp_path, tiny_tokenizer):
    from lit_kd.models import load_model

    model = load_model(ModelConfig(config=tiny_llama_config(1)))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("earlier export")
    with pytest.raises(ExportError, match="already exists"):
        export_hf(model, tiny_tokenizer, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary left behind
