"""Export a model as a plain Hugging Face directory (safetensors + config + tokenizer).

The result loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
alone: no lit_kd import is needed to use a distilled student.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.errors import LitKDError


class ExportError(LitKDError, RuntimeError):
    """The export target is unusable (exists, not writable)."""


def export_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir``, which must not exist yet (an earlier export is never
    overwritten). Written to a temporary sibling first and renamed, so a crash leaves no half export."""
    target = Path(out_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"export target {target} already exists; choose a new directory (nothing was written)")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(target.parent, os.W_OK):
        raise ExportError(f"export target's folder {target.parent} is not writable")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        config = model.config
        for attribute in ("quantization_config",):
            if hasattr(config, attribute):
                delattr(config, attribute)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            target.rmdir()  # an empty directory, checked above
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
