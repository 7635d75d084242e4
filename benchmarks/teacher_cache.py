"""Training with the live teacher vs the teacher cache, side by side in one run, and the loss difference a
float32 and a bfloat16 cache make.

    python benchmarks/teacher_cache.py --config configs/demo.yaml            # one training epoch each
    python benchmarks/teacher_cache.py --config configs/tiny.yaml --steps 20

1. builds a float32 and a bfloat16 cache of the config's teacher over its data (timed);
2. fits the config for one epoch (or ``--steps``) with the live teacher, then from the float32 cache, timing the
   training loop only (no validation, no checkpoints; model loading excluded) — same seed, same batches;
3. on the first ``--loss-batches`` training batches, compares the KD loss of the live teacher with both caches;
4. prints the FLOP projection of the cache's gain for the paper's model pairs (one token: a teacher forward is
   2·P_t FLOPs, a student step 6·P_s, the cached teacher's LM head 2·d_t·V).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from record import write_record

from lit_kd.teacher.build import write_teacher_cache
from lit_kd.teacher.cache import TeacherCache
from lit_kd.training import Run, build

PAIRS = {  # (teacher parameters, teacher hidden, vocabulary, student parameters)
    "GPT-2 XL → GPT-2 Base": (1.558e9, 1600, 50257, 124e6),
    "OPT-6.7B → OPT-1.3B": (6.7e9, 4096, 50272, 1.3e9),
}


class LoopTimer(L.Callback):
    def on_train_start(self, trainer, module):
        self.started = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.started
        self.steps = trainer.global_step


def run_for(config: str, out: Path, extra: list[str]) -> Run:
    return build(
        args=["--config", config, "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(out), *extra]
    )  # fmt: skip


def timed_epoch(config: str, out: Path, extra: list[str]) -> tuple[float, int]:
    run = run_for(config, out, extra)
    timer = LoopTimer()
    run.trainer.callbacks.append(timer)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    return timer.seconds, timer.steps


def kd_losses(config: str, out: Path, extra: list[str], batches: int) -> list[float]:
    run = run_for(config, out, extra)
    run.datamodule.setup("fit")
    module = run.module
    module.configure_model()
    module.eval()
    values = []
    loader = run.datamodule.train_dataloader()
    with torch.no_grad():
        for _, batch in zip(range(batches), loader):
            values.append(float(module.compute_losses(batch, "train").mean("kd_loss")))
    return values


def cache_shape(path: Path) -> dict[str, int]:
    """The cache's hidden rows (every split), their width and the LM head's rows."""
    cache = TeacherCache.open(path)
    rows = sum(shard.rows for shards in cache.shards.values() for shard in shards)
    return {"rows": rows, "hidden": cache.hidden_size, "head_rows": cache.head.weight.shape[0]}


def flop_projection() -> dict[str, tuple[float, float]]:
    """Per pair of ``PAIRS``: the teacher forward's share of a live step's FLOPs, and live / cached FLOPs."""
    projection = {}
    for name, (teacher, hidden, vocab, student) in PAIRS.items():
        live_flops, cached_flops = 2 * teacher + 6 * student, 2 * hidden * vocab + 6 * student
        projection[name] = (2 * teacher / live_flops, live_flops / cached_flops)
    return projection


def table(record: dict) -> str:
    """The README's block: the benchmark's printed summary, from the record."""
    results = record["results"]
    lines = []
    for dtype, cache in results["caches"].items():
        line = f"built the {dtype} cache in {cache['seconds']:.1f} s: {cache['bytes'] / 1e6:.1f} MB"
        if dtype == "float32":
            line += (f"        (rows: {cache['rows']:,} × {cache['hidden']:,}; the rest is the LM head, "
                     f"{cache['head_rows']:,} × {cache['hidden']:,})")  # fmt: skip
        lines.append(line)
    steps, live, cached = results["steps"], results["live_seconds"], results["cached_seconds"]
    lines.append(f"training loop, {steps} steps: live teacher {live:.1f} s ({live / steps:.2f} s/step), teacher cache "
                 f"{cached:.1f} s ({cached / steps:.2f} s/step): {live / cached:.2f}x faster")  # fmt: skip
    for dtype, difference in results["loss_differences"].items():
        lines.append(f"KD loss, {dtype} cache vs live teacher over {results['loss_batches']} batches: max |difference| "
                     f"{difference['max_difference']:.2e} (relative {difference['relative']:.2e})")  # fmt: skip
    lines.append("FLOP projection per token (teacher forward 2·P_t, student step 6·P_s, cached teacher head 2·d_t·V):")
    for name, (share, gain) in results["flop_projection"].items():
        lines.append(f"  {name}: teacher forward {share:.0%} of a live step; cached step {gain:.2f}x fewer FLOPs")
    return "\n".join(["```", *lines, "```"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per timed fit (default: one epoch)")
    parser.add_argument("--loss-batches", type=int, default=5)
    parser.add_argument("--out", default="logs/benchmarks/teacher_cache")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, torch threads "
          f"{torch.get_num_threads()}, config {args.config}", flush=True)  # fmt: skip
    limit = ["--trainer.max_steps", str(args.steps)] if args.steps else ["--trainer.max_epochs", "1"]

    caches, built = {}, {}
    for dtype in ("float32", "bfloat16"):
        run = run_for(args.config, out / "logs", [])
        started = time.perf_counter()
        caches[dtype] = write_teacher_cache(
            run.module.teacher_config, run.module.tokenizer, run.datamodule, out / f"cache-{dtype}", dtype=dtype
        )
        seconds = time.perf_counter() - started
        size = sum(p.stat().st_size for p in caches[dtype].iterdir())
        print(f"built the {dtype} cache in {seconds:.1f} s: {size / 1e6:.1f} MB", flush=True)
        built[dtype] = {"seconds": seconds, "bytes": size, **cache_shape(caches[dtype])}

    live_s, steps = timed_epoch(args.config, out / "logs", limit)
    cached_s, cached_steps = timed_epoch(
        args.config, out / "logs", [*limit, "--model.teacher_cache", str(caches["float32"])]
    )
    assert steps == cached_steps
    print(f"training loop, {steps} steps: live teacher {live_s:.1f} s ({live_s / steps:.2f} s/step), "
          f"teacher cache {cached_s:.1f} s ({cached_s / steps:.2f} s/step): {live_s / cached_s:.2f}x faster",
          flush=True)  # fmt: skip

    live = kd_losses(args.config, out / "logs", [], args.loss_batches)
    differences = {}
    for dtype, cache in caches.items():
        cached = kd_losses(args.config, out / "logs", ["--model.teacher_cache", str(cache)], args.loss_batches)
        worst = max(abs(a - b) for a, b in zip(live, cached))
        relative = max(abs(a - b) / abs(a) for a, b in zip(live, cached))
        print(f"KD loss, {dtype} cache vs live teacher over {len(live)} batches: max |difference| {worst:.2e} "
              f"(relative {relative:.2e}); live values {', '.join(f'{v:.5f}' for v in live)}")  # fmt: skip
        differences[dtype] = {"max_difference": worst, "relative": relative}

    print("FLOP projection per token (teacher forward 2·P_t, student step 6·P_s, cached teacher head 2·d_t·V):")
    projection = flop_projection()
    for name, (share, gain) in projection.items():
        print(f"  {name}: teacher forward {share:.0%} of a live step; cached step {gain:.2f}x fewer FLOPs")
    results = {"config": args.config, "steps": steps, "caches": built, "live_seconds": live_s,
               "cached_seconds": cached_s, "loss_batches": len(live), "live_kd_losses": live,
               "loss_differences": differences, "flop_projection": projection}  # fmt: skip
    write_record("teacher_cache", results)


if __name__ == "__main__":
    main()
