"""``python -m lit_kd demo``: the embedded default job, end to end on CPU.

Validates the student cut from the teacher, distills (``configs/demo.yaml``), validates the best
checkpoint, and prints the validation loss before and after, where the TensorBoard logs and the
checkpoint are, and the wall time. Extra arguments override the config (``--trainer.max_epochs 1``).
Exits with status 1 if the validation loss did not fall.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from lit_kd.cli.main import LitKDCLI

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def main(args: Optional[list[str]] = None) -> dict[str, float]:
    started = time.perf_counter()
    if not DEMO_CONFIG.is_file():
        raise SystemExit(f"demo config not found: {DEMO_CONFIG} (run from a checkout of lit_kd)")
    cli = LitKDCLI(args=["--config", str(DEMO_CONFIG), *(args or [])], run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule

    before = trainer.validate(model, datamodule=data, verbose=False)[0]
    trainer.fit(model, datamodule=data)
    best = trainer.checkpoint_callback.best_model_path
    after = trainer.validate(model, datamodule=data, ckpt_path="best", verbose=False)[0]
    minutes = (time.perf_counter() - started) / 60

    print()
    print("lit_kd demo — distillation summary")
    print(
        f"  validation loss (KD, {model.loss_config.name} at tau={model.loss_config.tau}): "
        f"{before['val/loss']:.4f} before -> {after['val/loss']:.4f} after"
    )
    print(f"  validation CE on the references: {before['val/lm_loss']:.4f} before -> {after['val/lm_loss']:.4f} after")
    print(f"  TensorBoard logs: {trainer.log_dir}   (tensorboard --logdir {Path(trainer.log_dir).parent.parent})")
    print(f"  best checkpoint (student only): {best}")
    print(f"  wall time: {minutes:.1f} min")
    if not after["val/loss"] < before["val/loss"]:
        raise SystemExit("the validation loss did not fall: the distillation failed")
    return {"before": before["val/loss"], "after": after["val/loss"], "minutes": minutes}
