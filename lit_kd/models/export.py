"""Export a model as a plain Hugging Face directory (safetensors + config + tokenizer).

The result loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
alone: no lit_kd import is needed to use a distilled student (one with adapters is merged into its base, or written
as a ``peft`` adapter directory beside its base). Beside them, ``lit_kd.json`` names the prompt format the model was
trained with (``data.prompt_format``), which ``evaluate`` reads back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.errors import ExportError
from lit_kd.models.adapters import has_adapters
from lit_kd.models.config import ModelConfig
from lit_kd.models.loading import load_model, resolve_path
from lit_kd.utils.io import atomic_directory, ensure_writable_dir

__all__ = ["ExportError", "check_export_target", "export_hf", "exported_prompt_format", "load_export"]
SETTINGS_FILE = "lit_kd.json"
ADAPTER_CONFIG = "adapter_config.json"
BASE_DIR = "base"
"""Where a ``separate`` export of a student with adapters keeps the frozen base they were trained on."""


def check_export_target(out_dir: str | os.PathLike) -> Path:
    """The export target must be new (or an empty directory) in a writable folder."""
    if not str(out_dir).strip():
        raise ExportError("--out must name a new directory to export to, got ''")
    target = Path(out_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"export target {target} already exists; choose a new directory (nothing was written)")
    ensure_writable_dir(target.parent, "export target's folder")
    return target


def export_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    prompt_format: str = "dolly",
    adapters: str = "merged",
) -> Path:
    """Write ``model``, ``tokenizer`` and the ``prompt_format`` it was trained with to ``out_dir``, which must not
    exist yet (an earlier export is never overwritten). Written to a temporary sibling first and renamed, so a crash
    leaves no half export.

    A student with adapters (``model.student.peft``) is written ``merged`` into its base weights (a plain Hugging
    Face model, the default), or ``separate``: the adapters as ``PeftModel.save_pretrained`` writes them, with the
    frozen base they were trained on in ``base/`` (``PeftModel.from_pretrained(AutoModelForCausalLM
    .from_pretrained(out / "base"), out)`` loads them, and so does ``evaluate``). Either way the model given is
    consumed (its adapters merged or unloaded)."""
    if adapters not in ("merged", "separate"):
        raise ExportError(f"adapters must be merged or separate, got {adapters!r}")
    target = check_export_target(out_dir)
    separate = has_adapters(model) and adapters == "separate"
    if has_adapters(model) and not separate:
        model = model.merge_and_unload()
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)  # with adapters: the adapters alone
        if separate:
            model.unload().save_pretrained(Path(tmp) / BASE_DIR, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / SETTINGS_FILE).write_text(json.dumps({"prompt_format": prompt_format}) + "\n")
    return target


def load_export(config: ModelConfig) -> nn.Module:
    """A Hugging Face model directory or hub id; an adapter directory (``adapter_config.json``: a ``separate``
    export, or any ``peft`` adapter) is loaded onto its base: the export's ``base/``, else the base its config
    names."""
    path = resolve_path(config.path) if config.path is not None else None
    if path is None or not (Path(path) / ADAPTER_CONFIG).is_file():
        return load_model(config, "model")
    from peft import PeftConfig, PeftModel

    base_dir = Path(path) / BASE_DIR
    base = str(base_dir) if base_dir.is_dir() else PeftConfig.from_pretrained(path).base_model_name_or_path
    if not base:
        raise ExportError(f"{path}: an adapter directory whose base is not named (no {BASE_DIR}/ beside it)")
    return PeftModel.from_pretrained(load_model(ModelConfig(path=base, dtype=config.dtype), "adapters' base"), path)


def exported_prompt_format(directory: str | os.PathLike) -> Optional[str]:
    """The prompt format an export of lit_kd names (``lit_kd.json``), None for any other model directory."""
    path = Path(directory) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("prompt_format")
    except (ValueError, AttributeError):
        raise ExportError(f"{path}: not the settings file lit_kd writes (a JSON object with prompt_format)") from None
    return value if isinstance(value, str) else None

