"""``python -m lit_kd demo``: the embedded default job, end to end on CPU.

0. builds the teacher cache of the demo's data once (``logs/teacher_cache/demo``; reused by later runs, a new
   folder when the teacher or the data changed) and trains from it: the teacher's body never runs in training
   (``--model.teacher_cache DIR`` picks another cache);
1. loads the teacher and cuts the student from it (``configs/demo.yaml``);
2. scores ROUGE-L of the teacher and of the untrained student on the held-out test prompts;
3. validates, distills, and validates the best checkpoint (kept by validation ROUGE-L);
4. scores the distilled student on the same prompts and prints one table with the three rows,
   the validation loss before and after, where the logs and the checkpoint are, and the wall time.

Extra arguments override the config (``--trainer.max_epochs 1``). Exits with status 1 if the
validation loss did not fall.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from lit_kd.errors import CacheError
from lit_kd.eval.benchmarks import Benchmark
from lit_kd.eval.evaluate import EvalResult, evaluate_model, new_progress, results_markdown
from lit_kd.eval.generate import SamplingConfig
from lit_kd.models import load_model
from lit_kd.teacher import TeacherCache
from lit_kd.teacher.build import write_teacher_cache
from lit_kd.training import build
from lit_kd.utils.io import atomic_write_text, numbered_paths

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
TABLE_SEEDS = (10, 20, 30)
OTHER_FORMAT = {"chat_template": "dolly", "dolly": "chat_template"}


def demo_cache(model, data, save_dir: Path) -> Path:
    """The first of ``<save_dir>/teacher_cache/demo``, ``demo-2``, ... that holds this teacher's cache for this data,
    built if none does."""
    for target in numbered_paths(save_dir / "teacher_cache" / "demo"):
        try:
            return write_teacher_cache(model.teacher_config, model.tokenizer, data, target)
        except CacheError:
            continue  # built for another teacher or data: try the next name
    raise AssertionError("unreachable: numbered_paths is endless")


def main(args: Optional[list[str]] = None) -> dict[str, float]:
    started = time.perf_counter()
    if not DEMO_CONFIG.is_file():
        raise SystemExit(f"demo config not found: {DEMO_CONFIG} (run from a checkout of lit_kd)")
    run = build(["--config", str(DEMO_CONFIG), *(args or [])])
    trainer, model, data = run.trainer, run.module, run.datamodule
    if model.teacher_cache_path is None and model.kd_ratio > 0:
        model.teacher_cache_path = str(demo_cache(model, data, Path(run.config.trainer.logger.init_args.save_dir)))
        model.teacher_cache = TeacherCache.open(model.teacher_cache_path)  # checked as it was written

    model.configure_model()
    source = f"{data.raw or data.sources['test']} (test split)"
    held_out = Benchmark("demo test", source, data.load_split_records()["test"])
    settings = model.val_rouge.generation if model.val_rouge is not None else SamplingConfig(max_new_tokens=96)
    rows: list[EvalResult] = []
    generations: list[dict] = []

    def score(label: str, lm) -> None:
        with new_progress() as progress:
            rows.append(
                evaluate_model(lm, model.rendering, [held_out], TABLE_SEEDS, settings, label, progress, generations)
            )

    # with model.teacher_cache the module never holds the teacher's body: load it for its ROUGE-L row only
    teacher = model.teacher if model.teacher is not None else load_model(model.teacher_config, "teacher").eval()
    score(f"teacher ({teacher.config.num_hidden_layers} layers)", teacher)
    del teacher
    score(f"student before KD ({model.student.config.num_hidden_layers} layers)", model.student)

    before = trainer.validate(model, datamodule=data, verbose=False)[0]
    trainer.fit(model, datamodule=data)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    after = trainer.validate(model, datamodule=data, ckpt_path=best or None, verbose=False)[0]
    score("student after KD (best epoch)", model.student)

    table = results_markdown(rows, title=f"ROUGE-L on the {len(held_out.records)} held-out demo prompts")
    log_dir = Path(trainer.log_dir)
    atomic_write_text(log_dir / "demo_rougeL.md", table)
    atomic_write_text(log_dir / "demo_generations.jsonl", "".join(json.dumps(g) + "\n" for g in generations))
    minutes = (time.perf_counter() - started) / 60

    loss = model.loss_config
    print()
    print("lit_kd demo — distillation summary")
    other = OTHER_FORMAT[data.prompt_format]
    print(f"  prompt format: {data.prompt_format} (--data.prompt_format {other} for the other)")
    kd = f"KD, {loss.name} at tau={loss.tau}"
    print(f"  validation loss ({kd}): {before['val/loss']:.4f} before -> {after['val/loss']:.4f} after")
    print(f"  validation CE on the references: {before['val/lm_loss']:.4f} before -> {after['val/lm_loss']:.4f} after")
    if "val/rougeL" in after:
        print(f"  validation ROUGE-L: {before['val/rougeL']:.2f} before -> {after['val/rougeL']:.2f} after")
    print()
    print(table)
    print(f"  TensorBoard logs: {log_dir}   (tensorboard --logdir {log_dir.parent.parent})")
    print(f"  best checkpoint (student only): {best or 'none (checkpointing is off: the final weights were used)'}")
    print(f"  ROUGE-L table and generations: {log_dir / 'demo_rougeL.md'}, {log_dir / 'demo_generations.jsonl'}")
    print(f"  wall time: {minutes:.1f} min")
    if not after["val/loss"] < before["val/loss"]:
        raise SystemExit("the validation loss did not fall: the distillation failed")
    return {"before": before["val/loss"], "after": after["val/loss"], "minutes": minutes}
