"""Cost of the KD diagnostics: training-loop time with them off and on, side by side in one run.

    python benchmarks/diagnostics_overhead.py --config configs/tiny.yaml --steps 40 --log-every 1
    python benchmarks/diagnostics_overhead.py --config configs/demo.yaml --steps 10 --log-every 5

Each repeat fits the same config twice from the same seed — diagnostics off, then on (the order
alternates between repeats) — and times only the training loop (callback from on_train_start to
on_train_end), so model loading and data preparation are excluded. Prints each run's seconds per
step and the on/off ratio of the summed times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
from record import write_record

from lit_kd.training import build


class LoopTimer(L.Callback):
    def on_train_start(self, trainer, module):
        self.started = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.started


def timed_fit(config: str, steps: int, log_every: int, diagnostics: bool, out: Path) -> float:
    run = build(
        args=[
            "--config", config,
            "--model.diagnostics", str(diagnostics).lower(),
            "--trainer.max_steps", str(steps),
            "--trainer.max_epochs", "-1",  # as many epochs as the steps take (the tiny config stops at 2)
            "--trainer.limit_val_batches", "0",
            "--trainer.log_every_n_steps", str(log_every),
            "--trainer.enable_checkpointing", "false",
            "--trainer.logger.init_args.save_dir", str(out),
        ]
    )  # fmt: skip
    timer = LoopTimer()
    run.trainer.callbacks.append(timer)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=1, help="trainer.log_every_n_steps (1 = worst case)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="logs/benchmarks")
    args = parser.parse_args()
    totals = {False: 0.0, True: 0.0}
    runs = []
    for repeat in range(args.repeats):
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for diagnostics in order:
            seconds = timed_fit(args.config, args.steps, args.log_every, diagnostics, Path(args.out))
            totals[diagnostics] += seconds
            runs.append({"repeat": repeat, "diagnostics": diagnostics, "seconds": seconds})
            print(f"repeat {repeat}: diagnostics {'on ' if diagnostics else 'off'}  {seconds / args.steps:.4f} s/step")
    ratio = totals[True] / totals[False]
    print(
        f"{args.config}, {args.steps} steps x {args.repeats} repeats, log_every_n_steps={args.log_every}: "
        f"on/off = {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)"
    )
    results = {"config": args.config, "steps": args.steps, "repeats": args.repeats, "log_every": args.log_every,
               "runs": runs, "ratio": ratio}  # fmt: skip
    write_record(record_name(args.config, args.log_every), results)


def record_name(config: str, log_every: int) -> str:
    """``diagnostics_overhead-<config's stem>-every<N>``: the README quotes runs of two configs and intervals."""
    return f"diagnostics_overhead-{Path(config).stem}-every{log_every}"


def table(record: dict) -> str:
    """The README's table: one row, the seconds per step of each repeat with diagnostics off and on (in the order
    of the repeats) and the on/off ratio of the summed times."""
    results = record["results"]
    steps = results["steps"]
    per_step = {
        on: ", ".join(f"{run['seconds'] / steps:.2f}" for run in results["runs"] if run["diagnostics"] == on)
        for on in (False, True)
    }
    ratio = results["ratio"]
    return "\n".join([
        "| config | steps × repeats | log_every_n_steps | off: s / step, each repeat | on: s / step, each repeat "
        "| on / off |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `{results['config']}` | {steps} × {results['repeats']} | {results['log_every']} | {per_step[False]} | "
        f"{per_step[True]} | {ratio:.3f} ({(ratio - 1) * 100:+.1f}%) |",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
