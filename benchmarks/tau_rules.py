"""What a per-token temperature rule costs: the chunked KD loss (LM heads + objective + backward) with each
``tau_rule`` against the constant τ, side by side in one run.

    python benchmarks/tau_rules.py                          # V = 49,152 (the demo's), 2,048 rows, fkl and rkl
    python benchmarks/tau_rules.py --vocab 50257 --rows 4096 --objectives fkl,js,drkl

The problem is ``benchmarks/loss_memory.py``'s: ``--rows`` response rows, student hidden 768 with its own LM head,
teacher hidden 1,600 with a frozen head (random weights, float32), ``chunked_token_sums`` with ``--chunk`` rows
per chunk, ``kd_ratio`` 1. Time is the wall time of forward + backward, median of ``--repeats`` after one warm-up,
every setting interleaved in each repeat so that drift of the machine's speed hits them alike. For
``entropy_target`` the Newton iterations it took are counted. Whether ``THP_MEM_ALLOC_ENABLE`` is set is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from record import write_record

import lit_kd.losses.temperature as temperature
from lit_kd.losses import LossConfig
from lit_kd.losses.chunked import chunked_token_sums
from lit_kd.models.head import OutputHead

STUDENT_HIDDEN, TEACHER_HIDDEN = 768, 1600
RULES = ("none", "logit_standardization", "sharpness_matching", "entropy_target")


def problem(rows: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, STUDENT_HIDDEN, generator=g)
    weight = torch.randn(vocab, STUDENT_HIDDEN, generator=g) * 0.05
    teacher_hidden = torch.randn(rows, TEACHER_HIDDEN, generator=g)
    teacher_weight = torch.randn(vocab, TEACHER_HIDDEN, generator=g) * 0.05
    targets = torch.randint(0, vocab, (rows,), generator=g)
    return hidden, weight, teacher_hidden, teacher_weight, targets


def step_seconds(config: LossConfig, tensors, chunk: int) -> float:
    hidden, weight, teacher_hidden, teacher_weight, targets = tensors
    leaf, leaf_weight = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    start = time.perf_counter()
    sums = chunked_token_sums(leaf, OutputHead(leaf_weight), targets, config, 1.0, chunk, teacher_hidden,
                              OutputHead(teacher_weight))  # fmt: skip
    sums.loss.backward()
    return time.perf_counter() - start


class IterationCounter:
    """Counts the log-softmax passes of ``entropy_target_tau`` (one per Newton/bisection iteration)."""

    def __init__(self) -> None:
        self.calls, self.passes = 0, 0
        self.solve = temperature.entropy_target_tau

    def __call__(self, *args, **kwargs):
        original = torch.log_softmax

        def counted(*a, **k):
            self.passes += 1
            return original(*a, **k)

        self.calls += 1
        torch.log_softmax = counted
        try:
            return self.solve(*args, **kwargs)
        finally:
            torch.log_softmax = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--objectives", default="fkl,rkl")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; V = {args.vocab:,}, {args.rows:,} rows, "
          f"chunk {args.chunk}, τ = {args.tau}, float32")  # fmt: skip
    tensors = problem(args.rows, args.vocab)
    counter = IterationCounter()
    temperature.entropy_target_tau = counter
    print("| objective | rule | s / step (median) | × constant τ | Newton passes per chunk |")
    print("|---|---|---:|---:|---:|")
    measured = {}
    for name in args.objectives.split(","):
        configs = {rule: LossConfig(name=name, tau=args.tau, tau_rule=rule) for rule in RULES}
        for config in configs.values():
            step_seconds(config, tensors, args.chunk)  # warm-up
        times: dict[str, list[float]] = {rule: [] for rule in RULES}
        counter.calls = counter.passes = 0
        for _ in range(args.repeats):
            for rule, config in configs.items():
                times[rule].append(step_seconds(config, tensors, args.chunk))
        base = statistics.median(times["none"])
        for rule in RULES:
            median = statistics.median(times[rule])
            passes = f"{counter.passes / counter.calls:.1f}" if rule == "entropy_target" and counter.calls else "–"
            print(f"| {name} | {rule} | {median:.3f} | {median / base:.2f} | {passes} |")
        medians = {rule: statistics.median(times[rule]) for rule in RULES}
        passes_per_chunk = counter.passes / counter.calls if counter.calls else None
        measured[name] = {"seconds": times, "median": medians, "entropy_target_passes": passes_per_chunk}
    write_record("tau_rules", {"vocab": args.vocab, "rows": args.rows, "chunk": args.chunk, "tau": args.tau,
                               "repeats": args.repeats, "objectives": measured})  # fmt: skip


def table(record: dict) -> str:
    """The README's table: per objective, each rule's median step and its ratio to the constant τ's; then the
    log-softmax passes ``entropy_target`` took per chunk."""
    objectives = record["results"]["objectives"]
    lines = ["| objective | " + " | ".join("constant τ" if rule == "none" else rule for rule in RULES) + " |",
             "|---|" + "---:|" * len(RULES)]  # fmt: skip
    for name, measured in objectives.items():
        median = measured["median"]
        cells = [f"{median[rule]:.2f} s ({median[rule] / median['none']:.2f}×)" for rule in RULES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    passes = [f"{measured['entropy_target_passes']:.1f} ({name})" for name, measured in objectives.items()
              if measured["entropy_target_passes"] is not None]  # fmt: skip
    if passes:
        lines += ["", f"`entropy_target`: log-softmax passes per chunk {', '.join(passes)}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
