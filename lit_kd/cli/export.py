"""``python -m lit_kd export``: a checkpoint's student (or teacher) as a Hugging Face directory.

python -m lit_kd export --ckpt logs/demo/version_0/checkpoints/best-2-75.ckpt --out exports/demo-student
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lit_kd.models.export import check_export_target, export_hf
from lit_kd.modules.loading import model_from_source


def export(ckpt: str, out: str, model: str = "student", adapters: Literal["merged", "separate"] = "merged") -> Path:
    """Export a model as safetensors + config + tokenizer, loadable with transformers alone.

    Args:
        ckpt: A lit_kd checkpoint (.ckpt) or a fit config (.yaml), as for ``evaluate``.
        out: The new directory to create (an existing non-empty one is refused).
        model: ``student`` or ``teacher``.
        adapters: A student with adapters (``model.student.peft``): ``merged`` into a full model (the default), or
            ``separate``: the adapter directory ``PeftModel.from_pretrained`` loads, its frozen base in ``base/``.
    """
    check_export_target(out)  # before any model loads
    lm, rendering, label = model_from_source(ckpt, model)
    target = export_hf(lm, rendering.tokenizer, out, rendering.name, adapters)

    print(f"exported {label} to {target}")
    return target
