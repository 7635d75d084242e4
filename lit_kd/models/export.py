"""Export a model as a plain Hugging Face directory (safetensors + config + tokenizer).

The result loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
alone: no lit_kd import is needed to use a distilled student. Beside them, ``lit_kd.json`` names the prompt format
the model was trained with (``data.prompt_format``), which ``evaluate`` reads back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.errors import ExportError
from lit_kd.utils.io import atomic_directory, ensure_writable_dir

__all__ = ["ExportError", "check_export_target", "export_hf", "exported_prompt_format"]
SETTINGS_FILE = "lit_kd.json"


def check_export_target(out_dir: str | os.PathLike) -> Path:
    """The export target must be new (or an empty directory) in a writable folder."""
    target = Path(out_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"export target {target} already exists; choose a new directory (nothing was written)")
    ensure_writable_dir(target.parent, "export target's folder")
    return target


def export_hf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike, prompt_format: str = "dolly"
) -> Path:
    """Write ``model``, ``tokenizer`` and the ``prompt_format`` it was trained with to ``out_dir``, which must not
    exist yet (an earlier export is never overwritten). Written to a temporary sibling first and renamed, so a crash
    leaves no half export."""
    target = check_export_target(out_dir)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / SETTINGS_FILE).write_text(json.dumps({"prompt_format": prompt_format}) + "\n")
    return target


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

