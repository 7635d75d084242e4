"""Peak memory and time of the KD loss — LM heads + objective + backward — full logits vs chunked fused heads,
side by side in one run, for every objective.

    python benchmarks/loss_memory.py                                  # V = 50,257 and 151,936, 4,096 rows
    python benchmarks/loss_memory.py --vocab 50257 --objectives fkl,js --rows-sweep 1024,4096,16384

The problem: ``rows`` response rows, student hidden 768 with its own LM head, teacher hidden 1,600 with a
frozen head (random weights, float32). "full" is ``chunk_size: null`` (both models' ``[rows, V]`` logits,
then the objective, then backward); "chunked" is ``chunked_token_sums`` with ``--chunk`` rows per chunk.
Each measurement runs in a fresh child process; its peak memory is the growth of the process's peak
resident set (``ru_maxrss``) over its resident set once the inputs exist, so it covers the logits, the
objective's temporaries and the gradients. Time is the wall time of forward + backward (best of
``--repeats``). The gradients of the two paths are compared (max relative difference). A full-logits run
that the machine cannot hold is retried with half the rows until it fits, and reported as such.
Whether PyTorch's huge-page allocation (``THP_MEM_ALLOC_ENABLE=1``) is set is printed: it halves the page
faults of large tensors on this CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time

import torch

from lit_kd.losses import OBJECTIVES, LossConfig
from lit_kd.losses.chunked import chunked_token_sums, token_sums_from_logits
from lit_kd.models.head import OutputHead

STUDENT_HIDDEN, TEACHER_HIDDEN = 768, 1600


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def measure(objective: str, vocab: int, rows: int, path: str, chunk: int, repeats: int, out: str) -> None:
    """Child process: build the problem, run it ``repeats`` times, write {peak, seconds, grads} to ``out``."""
    torch.manual_seed(0)
    hidden = (torch.randn(rows, STUDENT_HIDDEN) * 0.5).requires_grad_(True)
    weight = (torch.randn(vocab, STUDENT_HIDDEN) * 0.05).requires_grad_(True)
    teacher_hidden = torch.randn(rows, TEACHER_HIDDEN) * 0.5
    teacher_weight = torch.randn(vocab, TEACHER_HIDDEN) * 0.05
    targets = torch.randint(0, vocab, (rows,))
    config = LossConfig(objective, tau=2.0)
    head, teacher_head = OutputHead(weight), OutputHead(teacher_weight)
    baseline = rss_bytes()
    seconds = []
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        started = time.perf_counter()
        if path == "full":
            with torch.no_grad():
                teacher_logits = teacher_head.logits(teacher_hidden)
            sums = token_sums_from_logits(head.logits(hidden), teacher_logits, targets, config, 1.0)
            del teacher_logits
        else:
            sums = chunked_token_sums(hidden, head, targets, config, 1.0, chunk, teacher_hidden, teacher_head)
        (sums.loss / rows).backward()
        seconds.append(time.perf_counter() - started)
        del sums
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    torch.save(
        {"peak": peak, "seconds": min(seconds), "grads": (hidden.grad[:64].clone(), weight.grad[:512].clone())}, out
    )


def run_child(*args) -> dict | None:
    out = f"/tmp/loss_memory_{os.getpid()}_{time.time_ns()}.pt"
    context = mp.get_context("spawn")
    child = context.Process(target=measure, args=(*args, out))
    child.start()
    child.join()
    if child.exitcode != 0 or not os.path.exists(out):
        return None  # killed for memory (SIGKILL) or failed
    result = torch.load(out)
    os.unlink(out)
    return result


def relative_difference(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)) for x, y in zip(a, b))


GIB = 1024**3


def compare(objective: str, vocab: int, args: argparse.Namespace) -> dict:
    """One table row: both paths at ``args.rows`` (the full one at fewer rows when it does not fit)."""
    chunked = run_child(objective, vocab, args.rows, "chunked", args.chunk, args.repeats)
    rows, full = args.rows, None
    while rows >= 64 and full is None:
        full = run_child(objective, vocab, rows, "full", args.chunk, args.repeats)
        rows = rows if full is not None else rows // 2
    record = {"vocab": vocab, "objective": objective}
    if full is None or chunked is None:
        print(f"| {vocab:,} | {objective} | (did not run) | | | | | | |", flush=True)
        return record
    record.update(full_rows=rows, full_peak=full["peak"], chunked_peak=chunked["peak"],
                  full_seconds=full["seconds"], chunked_seconds=chunked["seconds"])  # fmt: skip
    if rows != args.rows:  # the full path did not fit: say where it does
        note = f"does not fit at {args.rows:,} rows; {full['peak'] / GIB:.2f} at {rows:,} rows"
        print(f"| {vocab:,} | {objective} | {note} | {chunked['peak'] / GIB:.2f} | | | "
              f"{chunked['seconds']:.2f} | | |", flush=True)  # fmt: skip
        return record
    record["grad_diff"] = relative_difference(chunked["grads"], full["grads"])
    print(f"| {vocab:,} | {objective} | {full['peak'] / GIB:.2f} | {chunked['peak'] / GIB:.2f} | "
          f"{chunked['peak'] / full['peak']:.3f} | {full['seconds']:.2f} | {chunked['seconds']:.2f} | "
          f"{chunked['seconds'] / full['seconds']:.2f} | {record['grad_diff']:.1e} |", flush=True)  # fmt: skip
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", default="50257,151936")
    parser.add_argument("--objectives", default=",".join(sorted(OBJECTIVES)))
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--rows-sweep", default="", help="also measure the chunked peak of the first objective at these rows"
    )
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args()
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    print(f"THP_MEM_ALLOC_ENABLE={thp}, torch threads {torch.get_num_threads()}, rows {args.rows}, chunk {args.chunk}, "
          f"student d={STUDENT_HIDDEN}, teacher d={TEACHER_HIDDEN}", flush=True)  # fmt: skip
    print("| V | objective | full peak (GiB) | chunked peak (GiB) | peak ratio | full s | chunked s | time ratio "
          "| grad diff |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    records = []
    for vocab in (int(v) for v in args.vocab.split(",")):
        for objective in args.objectives.split(","):
            records.append(compare(objective, vocab, args))
    if args.rows_sweep:
        objective, vocab = args.objectives.split(",")[0], int(args.vocab.split(",")[0])
        print(f"\nchunked peak vs rows ({objective}, V = {vocab:,}, chunk {args.chunk}):")
        for rows in (int(r) for r in args.rows_sweep.split(",")):
            result = run_child(objective, vocab, rows, "chunked", args.chunk, 1)
            print(f"  {rows:>6,} rows: {result['peak'] / GIB:.3f} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=1)


if __name__ == "__main__":
    main()
