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

from lit_kd.training import build


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
    results = {}
    for fraction in (0.0, 0.5, 1.0):
        seconds, generating = timed_fit(args.config, args.steps, fraction, args.max_new_tokens, Path(args.out))
        results[fraction] = seconds
        per_step, share = seconds / args.steps, generating / seconds
        print(f"λ = {fraction}: {per_step:.2f} s/step ({seconds / results[0.0]:.2f}x off-policy); "
              f"generation {generating / args.steps:.2f} s/step = {share:.0%} of the step", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
