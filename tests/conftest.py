"""Shared fixtures: tiny models built from configs, the shipped tiny tokenizer, Dolly-format files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub: a name that is not a local path fails at once

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_TOKENIZER = ROOT / "data" / "tiny" / "tokenizer"
DEMO_DATA = ROOT / "data" / "demo" / "instructions.jsonl"


def tiny_llama_config(layers: int = 4, vocab_size: int = 1000, **overrides: Any) -> dict[str, Any]:
    config = {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "initializer_range": 0.2,
        "bos_token_id": None,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }
    config.update(overrides)
    return config


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def dolly_rows(n: int) -> list[dict[str, str]]:
    """``n`` raw-Dolly rows (instruction/context/response/category), distinct and deterministic."""
    return [
        {
            "instruction": f"Question number {i}: what is {i} plus {i % 7}?",
            "context": "" if i % 3 else f"Numbers {i} and {i % 7} are given.",
            "response": f"The sum is {i + i % 7}.",
            "category": "open_qa" if i % 3 else "closed_qa",
        }
        for i in range(n)
    ]


@pytest.fixture
def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


@pytest.fixture
def tiny_model_configs():
    """(teacher, student) configs: a 4-layer random teacher, a 2-layer student cut from it."""
    from lit_kd.models import ModelConfig, StudentConfig

    teacher = ModelConfig(config=tiny_llama_config(4), tokenizer=str(TINY_TOKENIZER))
    return teacher, StudentConfig(layers=[0, 3])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_args(tmp_path):
    """CLI arguments that point configs/tiny.yaml's outputs into a temporary directory."""
    return [
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--model.teacher.tokenizer",
        str(TINY_TOKENIZER),
        "--data.raw",
        str(DEMO_DATA),
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "logs"),
        "--trainer.enable_model_summary",
        "false",
    ]


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests are skipped where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
