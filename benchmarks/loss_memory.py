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
``--repeats``, after one untimed warm-up). The gradients of the two paths are compared (max relative difference).
JS is measured at β = 0.5 (the peers' JSD), every objective at τ = 2, KD only.

Peers (``--peers auto``: those installed; ``pip install -e '.[bench]'``), in a second table, each against the
full path in the same run and the same way, for the objectives they cover (FKL, RKL, JS as generalized-JSD
β = 0, 1, 0.5): Liger-Kernel's ``LigerFusedLinearJSDLoss`` eager and ``torch.compile``d, and TRL's
``ChunkedDivergenceFunction`` (its DistillationTrainer's chunked divergence); the time ratio's median and range
over the repeats, and the loss and gradient against the full path's. A full-logits run
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
import statistics
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
    """Child process: build the problem, run it once untimed and ``repeats`` times timed, write {peak, seconds,
    all_seconds, loss, grads} to ``out``."""
    torch.manual_seed(0)
    hidden = (torch.randn(rows, STUDENT_HIDDEN) * 0.5).requires_grad_(True)
    weight = (torch.randn(vocab, STUDENT_HIDDEN) * 0.05).requires_grad_(True)
    teacher_hidden = torch.randn(rows, TEACHER_HIDDEN) * 0.5
    teacher_weight = torch.randn(vocab, TEACHER_HIDDEN) * 0.05
    targets = torch.randint(0, vocab, (rows,))
    config = LossConfig(objective, tau=2.0, **({"js_beta": 0.5} if objective == "js" else {}))  # the peers' JS
    head, teacher_head = OutputHead(weight), OutputHead(teacher_weight)
    baseline = rss_bytes()
    seconds = []
    for _ in range(repeats + 1):  # the first is a warm-up (and a peer's torch.compile), not timed
        hidden.grad = weight.grad = None
        started = time.perf_counter()
        if path == "full":
            with torch.no_grad():
                teacher_logits = teacher_head.logits(teacher_hidden)
            loss = token_sums_from_logits(head.logits(hidden), teacher_logits, targets, config, 1.0).loss / rows
            del teacher_logits
        elif path == "chunked":
            loss = chunked_token_sums(hidden, head, targets, config, 1.0, chunk, teacher_hidden, teacher_head).loss / rows
        else:
            loss = peer_loss(path, objective, hidden, weight, teacher_hidden, teacher_weight, targets, chunk)
        loss.backward()
        seconds.append(time.perf_counter() - started)
        value = loss.detach().item()
        del loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    seconds = seconds[1:]
    torch.save({"peak": peak, "seconds": min(seconds), "all_seconds": seconds, "loss": value,
                "grads": (hidden.grad[:64].clone(), weight.grad[:512].clone())}, out)  # fmt: skip


PEER_BETA = {"fkl": 0.0, "rkl": 1.0, "js": 0.5}
"""The objectives the peers cover, as their generalized-JSD β (0: KL(p‖q), 1: KL(q‖p)); lit_kd's js is β = 0.5."""
PEERS = {"liger": "liger_kernel", "liger-compiled": "liger_kernel", "trl": "trl"}


def peer_loss(path, objective, hidden, weight, teacher_hidden, teacher_weight, targets, chunk):
    """The mean KD loss over the rows by a peer's fused-linear path, at τ = 2, KD only: Liger's
    ``LigerFusedLinearJSDLoss`` (eager or ``torch.compile``d chunks) or TRL's ``ChunkedDivergenceFunction`` (the
    DistillationTrainer's token-chunked divergence)."""
    beta = PEER_BETA[objective]
    if path.startswith("liger"):
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=2.0,
                                       compiled=path == "liger-compiled", chunk_size=chunk)  # fmt: skip
        return loss(hidden, weight, teacher_hidden, teacher_weight, targets)
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    divergence, _ = ChunkedDivergenceFunction.apply(hidden, weight, None, teacher_hidden, teacher_weight, None, beta,
                                                    2.0, 1.0, None, 1.0, None)  # fmt: skip
    return divergence.mean()


def installed_peers() -> list[str]:
    import importlib.util

    return [path for path, package in PEERS.items() if importlib.util.find_spec(package) is not None]


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
    parser.add_argument("--peers", default="auto", help="auto (every installed one), none, or a list of "
                        + ",".join(PEERS))  # fmt: skip
    args = parser.parse_args()
    peers = installed_peers() if args.peers == "auto" else [p for p in args.peers.split(",") if p and p != "none"]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"--peers: unknown {', '.join(unknown)}; choose auto, none or from {', '.join(PEERS)}")
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
    covered = [o for o in args.objectives.split(",") if o in PEER_BETA]
    print(f"\npeers found: {', '.join(peers) or 'none'} (pip install -e '.[bench]' installs liger-kernel and trl)")
    if peers and covered:
        print(f"\n| V | objective | path | peak × full | time × full (median; min–max of {args.repeats}) "
              "| loss − full | grad diff |")  # fmt: skip
        print("|---:|---|---|---:|---:|---:|---:|")
        for vocab in (int(v) for v in args.vocab.split(",")):
            for objective in covered:
                full = run_child(objective, vocab, args.rows, "full", args.chunk, args.repeats)
                if full is None:
                    print(f"| {vocab:,} | {objective} | (the full path does not fit at {args.rows:,} rows) | | | | |")
                    continue
                for path in ["chunked", *peers]:
                    result = run_child(objective, vocab, args.rows, path, args.chunk, args.repeats)
                    if result is None:
                        print(f"| {vocab:,} | {objective} | {path} | (did not run) | | | |", flush=True)
                        continue
                    ratios = sorted(t / full["seconds"] for t in result["all_seconds"])
                    print(f"| {vocab:,} | {objective} | {'lit_kd chunked' if path == 'chunked' else path} | "
                          f"{result['peak'] / full['peak']:.3f} | {statistics.median(ratios):.2f} "
                          f"({ratios[0]:.2f}–{ratios[-1]:.2f}) | {result['loss'] - full['loss']:+.1e} | "
                          f"{relative_difference(result['grads'], full['grads']):.1e} |", flush=True)  # fmt: skip
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
