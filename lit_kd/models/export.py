"""Export a model as a plain Hugging Face directory (safetensors + config + tokenizer).

The result loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
alone: no lit_kd import is needed to use a distilled student.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.errors import ExportError
from lit_kd.utils.io import atomic_directory, ensure_writable_dir

__all__ = ["ExportError", "check_export_target", "export_hf"]


def check_export_target(out_dir: str | os.PathLike) -> Path:
    """The export target must be new (or an empty directory) in a writable folder."""
    target = Path(out_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"export target {target} already exists; choose a new directory (nothing was written)")
    ensure_writable_dir(target.parent, "export target's folder")
    return target


def export_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir``, which must not exist yet (an earlier export is never
    overwritten). Written to a temporary sibling first and renamed, so a crash leaves no half export."""
    target = check_export_target(out_dir)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target
