"""Time per optimizer step off-policy (λ = 0), mixed (λ = 0.5) and on-policy (λ = 1), side by side in one run, and
the share of the student's generation in the on-policy step.

    python benchmarks/policy_step.py --config configs/demo.yaml --steps 6
    python benchmarks/policy_step.py --config configs/tiny.yaml --steps 20

Each setting fits the same config from the same seed for ``--steps`` optimizer steps with the live teacher,
timing only the training loop (model loading excluded, no validation, no checkpoints); the time spent inside
the policy's sampling (``StudentPolicy.mix``: the student's ``generate``) is measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import lightning as L
import torch
from record import write_record

from lit_kd.training import build

FRACTIONS = (0.0, 0.5, 1.0)
LABELS = {0.0: "0 (off-policy)", 0.5: "0.5 (mixed)", 1.0: "1 (on-policy)"}


class LoopTimer(L.Callback):
    def on_train_start(self, trainer, module):
        self.started = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.started


def timed_fit(config: str, steps: int, fraction: float, max_new_tokens: int, out: Path) -> tuple[float, float]:
    run = build(
        args=["--config", config, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
              "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.save_dir", str(out), "--model.teacher_cache", "null",
              "--model.policy.student_fraction", str(fraction),
              "--model.policy.sampling.max_new_tokens", str(max_new_tokens)]
    )  # fmt: skip
    generation = [0.0]
    policy = run.module.student_policy
    if policy is not None:
        mix = policy.mix

        def timed_mix(*args, **kwargs):
            started = time.perf_counter()
            try:
                return mix(*args, **kwargs)
            finally:
                generation[0] += time.perf_counter() - started

        policy.mix = timed_mix
    timer = LoopTimer()
    run.trainer.callbacks.append(timer)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    return timer.seconds, generation[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="logs/benchmarks/policy_step")
    args = parser.parse_args()
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    print(f"THP_MEM_ALLOC_ENABLE={thp}, torch threads {torch.get_num_threads()}, {args.config}, {args.steps} steps, "
          f"max_new_tokens {args.max_new_tokens}")  # fmt: skip
    results, settings = {}, []
    for fraction in FRACTIONS:
        seconds, generating = timed_fit(args.config, args.steps, fraction, args.max_new_tokens, Path(args.out))
        results[fraction] = seconds
        per_step, share = seconds / args.steps, generating / seconds
        print(f"λ = {fraction}: {per_step:.2f} s/step ({seconds / results[0.0]:.2f}x off-policy); "
              f"generation {generating / args.steps:.2f} s/step = {share:.0%} of the step", flush=True)  # fmt: skip
        settings.append({"fraction": fraction, "seconds": seconds, "generation_seconds": generating})
    write_record("policy_step", {"config": args.config, "steps": args.steps, "max_new_tokens": args.max_new_tokens,
                                 "settings": settings})  # fmt: skip


def table(record: dict) -> str:
    """The README's table: per λ, the seconds per optimizer step, the ratio to off-policy and generation's share."""
    results = record["results"]
    steps, settings = results["steps"], results["settings"]
    off_policy = next(s["seconds"] for s in settings if s["fraction"] == 0.0)
    lines = ["| λ | s / optimizer step | vs off-policy | generation share of the step |", "|---:|---:|---:|---:|"]
    for setting in settings:
        seconds, generating = setting["seconds"], setting["generation_seconds"]
        share = f"{generating / seconds:.0%}" + (f" ({generating / steps:.2f} s)" if setting["fraction"] else "")
        lines.append(f"| {LABELS.get(setting['fraction'], setting['fraction'])} | {seconds / steps:.2f} | "
                     f"{seconds / off_policy:.2f}× | {share} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
