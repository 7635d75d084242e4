"""Peak memory and time of the KD loss — LM heads + objective + backward — full logits, lit_kd's chunked fused heads
(eager and ``torch.compile``d) and the peers, side by side in one run, for every objective.

    python benchmarks/loss_memory.py --vocab 50257                    # every objective, 4,096 rows
    python benchmarks/loss_memory.py --vocab 151936 --rows 2048 --peers none
    python benchmarks/loss_memory.py --vocab 50257 --objectives fkl,js --rows-sweep 1024,4096,16384

The problem: ``rows`` response rows, student hidden 768 with its own LM head, teacher hidden 1,600 with a
frozen head (random weights, float32). "full" is ``chunk_size: null`` (both models' ``[rows, V]`` logits,
then the objective, then backward); "chunked" is ``chunked_token_sums`` with ``--chunk`` rows per chunk (``auto``:
``auto_chunk_size``, 512 at V = 50,257 and 256 at 151,936; the peers get the same chunk), eager or compiled.
Each measurement runs in a fresh child process, one untimed warm-up (and compilation) first, then ``--repeats``
timed runs. Peak memory is the growth of the process's peak resident set (``VmHWM``, reset before each timed run)
over its resident set then, so it covers the logits, the objective's temporaries and the gradients of the step,
not a compiler's one-off memory. Time is the wall time of forward + backward: the best, and the median and range
of the ratios to the full path's best. Losses and gradients are compared with the full path's (max relative
difference). JS is measured at β = 0.5 (the peers' JSD), every objective at τ = 2, KD only.

Peers (``--peers auto``: those installed; ``pip install -e '.[bench]'``), for the objectives they cover (FKL, RKL,
JS as generalized-JSD β = 0, 1, 0.5): Liger-Kernel's ``LigerFusedLinearJSDLoss`` eager and ``torch.compile``d,
and TRL's ``ChunkedDivergenceFunction`` (its DistillationTrainer's chunked divergence). A full-logits run that
the machine cannot hold is retried with half the rows until it fits; every path is then compared at those rows,
and the chunked one is also run at ``--rows``. Whether PyTorch's huge-page allocation
(``THP_MEM_ALLOC_ENABLE=1``) is set is printed: it halves the page faults of large tensors on this CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import statistics
import time

import torch
from record import write_record

from lit_kd.losses import OBJECTIVES, LossConfig
from lit_kd.losses.chunked import auto_chunk_size, chunked_token_sums, token_sums_from_logits
from lit_kd.losses.fused import EAGER_WHEN_COMPILED
from lit_kd.models.head import OutputHead

STUDENT_HIDDEN, TEACHER_HIDDEN = 768, 1600


def status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak since the last ``reset_peak``) of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak(cuda: bool = False) -> int:
    """Reset the peak to the current use and return the latter: CUDA's allocated memory, or this process's
    resident set (Linux ``clear_refs``)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return status_bytes("VmRSS")


def measure(
    objective: str, vocab: int, rows: int, path: str, chunk: int, repeats: int, device: str, out: str
) -> None:
    """Child process: build the problem on ``device``, run it once untimed and ``repeats`` times timed, write {peak,
    seconds, all_seconds, loss, grads} to ``out`` (peak: of the resident set on CPU, of allocated memory on CUDA)."""
    torch.manual_seed(0)
    hidden = (torch.randn(rows, STUDENT_HIDDEN, device=device) * 0.5).requires_grad_(True)
    weight = (torch.randn(vocab, STUDENT_HIDDEN, device=device) * 0.05).requires_grad_(True)
    teacher_hidden = torch.randn(rows, TEACHER_HIDDEN, device=device) * 0.5
    teacher_weight = torch.randn(vocab, TEACHER_HIDDEN, device=device) * 0.05
    targets = torch.randint(0, vocab, (rows,), device=device)
    cuda = torch.device(device).type == "cuda"
    config = LossConfig(objective, tau=2.0, **({"js_beta": 0.5} if objective == "js" else {}))  # the peers' JS
    head, teacher_head = OutputHead(weight), OutputHead(teacher_weight)
    seconds, peak, matmul_seconds = [], 0, []
    matmuls = head_matmuls(hidden, weight, teacher_hidden, teacher_weight, chunk) if path == "chunked" else None
    for repeat in range(repeats + 1):  # the first is a warm-up (and torch.compile), not timed nor measured
        hidden.grad = weight.grad = None
        if matmuls is not None:  # the loss's own limit, timed beside it: its four matmuls alone, same chunks
            matmul_seconds.append(matmuls())
        if repeat > 0:
            gc.collect()
            baseline = reset_peak(cuda)
        started = time.perf_counter()
        if path == "full":
            with torch.no_grad():
                teacher_logits = teacher_head.logits(teacher_hidden)
            loss = token_sums_from_logits(head.logits(hidden), teacher_logits, targets, config, 1.0).loss / rows
            del teacher_logits
        elif path in ("chunked", "chunked-compiled"):
            loss = chunked_token_sums(hidden, head, targets, config, 1.0, chunk, teacher_hidden, teacher_head,
                                      compiled=path == "chunked-compiled").loss / rows  # fmt: skip
        else:
            loss = peer_loss(path, objective, hidden, weight, teacher_hidden, teacher_weight, targets, chunk)
        loss.backward()
        value = loss.detach().item()  # (a host sync on CUDA: the step is done)
        seconds.append(time.perf_counter() - started)
        del loss
        if repeat > 0:
            peak = max(peak, (torch.cuda.max_memory_allocated() if cuda else status_bytes("VmHWM")) - baseline)
    seconds = seconds[1:]
    torch.save({"peak": peak, "seconds": min(seconds), "all_seconds": seconds, "loss": value,
                "matmul_seconds": matmul_seconds[1:],
                "grads": (hidden.grad[:64].clone(), weight.grad[:512].clone())}, out)  # fmt: skip


def head_matmuls(hidden, weight, teacher_hidden, teacher_weight, chunk: int):
    """A timer of what the chunked loss cannot go below on a CPU: per ``chunk`` rows, the student's and the
    teacher's head forward (z_s = h Wᵀ, z_t = h_t W_tᵀ) and the two gradient matmuls (∂h = G W, ∂W += Gᵀ h), into
    buffers made once — the loss's elementwise work, CE and bookkeeping excluded."""
    h, w = hidden.detach(), weight.detach()
    logits = torch.empty(chunk, w.shape[0], device=w.device)
    teacher_logits = torch.empty_like(logits)
    grad_hidden, grad_weight = torch.empty(chunk, w.shape[1], device=w.device), torch.zeros_like(w)

    def run() -> float:
        sync = torch.cuda.synchronize if w.is_cuda else (lambda: None)
        sync()
        started = time.perf_counter()
        for first in range(0, h.shape[0], chunk):
            rows = min(chunk, h.shape[0] - first)
            torch.mm(h[first : first + rows], w.T, out=logits[:rows])
            torch.mm(teacher_hidden[first : first + rows], teacher_weight.T, out=teacher_logits[:rows])
            torch.mm(logits[:rows], w, out=grad_hidden[:rows])
            grad_weight.addmm_(logits[:rows].T, h[first : first + rows])
        sync()
        return time.perf_counter() - started

    return run


DEVICE = ["cpu"]
"""``--device``, for the child processes."""

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
    child = context.Process(target=measure, args=(*args, DEVICE[0], out))
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


def compare(objective: str, vocab: int, args: argparse.Namespace, peers: list[str]) -> list[dict]:
    """One objective at one V: the full path (at fewer rows when it does not fit: then every path at those rows,
    and the chunked one at ``args.rows`` too), lit_kd's chunked path eager and compiled, and the peers covering it,
    each printed as a row against the full path."""
    chunk = args.chunk if args.chunk != "auto" else auto_chunk_size(vocab, STUDENT_HIDDEN)
    rows, full = args.rows, None
    while rows >= 64 and full is None:
        full = run_child(objective, vocab, rows, "full", chunk, args.repeats)
        rows = rows if full is not None else rows // 2
    if full is None:
        print(f"| {vocab:,} | {objective} | full | (did not run) | | | | | | |", flush=True)
        return []
    compiled = args.compiled and objective not in EAGER_WHEN_COMPILED  # compile_loss runs those eagerly
    paths = ["chunked", *(["chunked-compiled"] if compiled else []),
             *(peers if objective in PEER_BETA else [])]  # fmt: skip
    records = [row(objective, vocab, rows, "full", full, full)]
    for path in paths:
        result = run_child(objective, vocab, rows, path, chunk, args.repeats)
        records.append(row(objective, vocab, rows, path, result, full))
    if rows != args.rows:  # the full path does not fit at args.rows: the chunked path there, on its own
        result = run_child(objective, vocab, args.rows, "chunked", chunk, args.repeats)
        records.append(row(objective, vocab, args.rows, "chunked", result, None))
    return records


NAMES = {"full": "full logits", "chunked": "lit_kd chunked", "chunked-compiled": "lit_kd chunked, compiled"}


def over_matmuls(record: dict) -> str:
    return f"{record['over_matmuls']:.3f}" if "over_matmuls" in record else ""


def row(objective: str, vocab: int, rows: int, path: str, result: dict | None, full: dict | None) -> dict:
    """Print one table row (ratios to ``full``, when given) and return it as a record."""
    name = NAMES.get(path, path)
    if result is None:
        print(f"| {vocab:,} | {objective} | {name} | {rows:,} | (did not run) | | | | | |", flush=True)
        return {"vocab": vocab, "objective": objective, "path": path, "rows": rows}
    record = {"vocab": vocab, "objective": objective, "path": path, "rows": rows, "peak": result["peak"],
              "seconds": result["seconds"], "all_seconds": result["all_seconds"]}  # fmt: skip
    if full is None:
        print(f"| {vocab:,} | {objective} | {name} | {rows:,} | {result['peak'] / GIB:.2f} | (full does not fit) "
              f"| {result['seconds']:.2f} | | | |", flush=True)  # fmt: skip
        return record
    if result.get("matmul_seconds"):  # paired repeats: the loss over its matmuls timed just before it
        limits = sorted(t / m for t, m in zip(result["all_seconds"], result["matmul_seconds"]))
        record.update(matmul_seconds=min(result["matmul_seconds"]), over_matmuls=statistics.median(limits))
    ratios = sorted(t / full["seconds"] for t in result["all_seconds"])
    record.update(peak_ratio=result["peak"] / full["peak"], time_ratio=statistics.median(ratios),
                  loss_diff=result["loss"] - full["loss"],
                  grad_diff=relative_difference(result["grads"], full["grads"]))  # fmt: skip
    print(f"| {vocab:,} | {objective} | {name} | {rows:,} | {result['peak'] / GIB:.2f} | {record['peak_ratio']:.3f} | "
          f"{result['seconds']:.2f} | {record['time_ratio']:.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f}) | "
          f"{record['loss_diff']:+.1e} | {record['grad_diff']:.1e} | {over_matmuls(record)} |", flush=True)  # fmt: skip
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", default="50257,151936")
    parser.add_argument("--objectives", default=",".join(sorted(OBJECTIVES)))
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--chunk", default="auto", type=lambda text: text if text == "auto" else int(text),
                        help="rows per chunk, for lit_kd and the peers alike (auto: lit_kd's auto_chunk_size)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: peak = torch.cuda.max_memory_allocated")
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure lit_kd's chunked path through torch.compile")
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
    DEVICE[0] = args.device
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}, THP_MEM_ALLOC_ENABLE={thp}, torch {torch.__version__}, "
          f"rows {args.rows}, chunk {args.chunk}, student d={STUDENT_HIDDEN}, teacher d={TEACHER_HIDDEN}, "
          f"{args.repeats} timed repeats after a warm-up")  # fmt: skip
    print(f"peers found: {', '.join(peers) or 'none'} (pip install -e '.[bench]' installs liger-kernel and trl)\n")
    print("| V | objective | path | rows | peak (GiB) | peak × full | s (best) | time × full (median; range) "
          "| loss − full | grad diff | × its matmuls |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    records = []
    for vocab in (int(v) for v in args.vocab.split(",")):
        for objective in args.objectives.split(","):
            records.extend(compare(objective, vocab, args, peers))
    if args.rows_sweep:
        objective, vocab = args.objectives.split(",")[0], int(args.vocab.split(",")[0])
        chunk = args.chunk if args.chunk != "auto" else auto_chunk_size(vocab, STUDENT_HIDDEN)
        print(f"\nchunked peak vs rows ({objective}, V = {vocab:,}, chunk {chunk}):")
        for rows in (int(r) for r in args.rows_sweep.split(",")):
            result = run_child(objective, vocab, rows, "chunked", chunk, 1)
            print(f"  {rows:>6,} rows: {result['peak'] / GIB:.3f} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=1)
    vocabs = args.vocab.split(",")
    write_record("loss_memory" if vocabs == ["50257"] else "loss_memory-v" + "-".join(vocabs),
                 {"rows": args.rows, "repeats": args.repeats, "peers": peers, "records": records})  # fmt: skip


GOALS = {"fkl": "≤ 0.093 and ≤ Liger's / ≤ Liger's", "js": "≤ 0.07 / ≤ 0.45 and ≤ Liger's",
         "rkl": "≤ Liger's, ≤ 0.10 / ≤ Liger's, ≤ 0.70"}  # fmt: skip
"""The goals the issues set for the chunked path (peak × full / time × full); the rest: ≤ 0.10 / ≤ 0.70."""


def table(record: dict) -> str:
    """The README's table: at V = 50,257 each objective's paths against its full path, with the goal and the loss
    over its own matmuls; at another V the chunked path alone against the full one."""
    rows: dict[str, dict[str, dict]] = {}
    for entry in record["results"]["records"]:
        rows.setdefault(entry["objective"], {})[entry["path"]] = entry
    single = len({entry["vocab"] for entry in record["results"]["records"]}) == 1
    if not single or record["results"]["records"][0]["vocab"] != 50257:
        return _other_vocab_table(rows)

    def pair(entry: dict | None) -> str:
        if entry is None or "peak_ratio" not in entry:
            return "—"
        return f"{entry['peak_ratio']:.3f} / {entry['time_ratio']:.2f}"

    lines = ["| objective | full logits: peak GiB / s | **lit_kd chunked (default)**: peak × full / time × full "
             "| its matmuls: s / **loss × matmuls** | lit_kd, `compile_loss`: peak × / time × "
             "| Liger fused-linear JSD, compiled: peak × / time × | goal: peak / time |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for objective, paths in rows.items():
        full, chunked = paths.get("full"), paths.get("chunked")
        if full is None or "peak" not in full:
            continue
        compiled = "eager (`EAGER_WHEN_COMPILED`)" if objective in EAGER_WHEN_COMPILED else pair(
            paths.get("chunked-compiled"))  # fmt: skip
        limit = (f"{chunked['matmul_seconds']:.2f} / **{chunked['over_matmuls']:.3f}**"
                 if chunked and "over_matmuls" in chunked else "—")  # fmt: skip
        goal, liger = GOALS.get(objective, "≤ 0.10 / ≤ 0.70"), pair(paths.get("liger-compiled"))
        lines.append(f"| {objective} | {full['peak'] / GIB:.2f} / {full['seconds']:.1f} | **{pair(chunked)}** "
                     f"| {limit} | {compiled} | {liger} | {goal} |")  # fmt: skip
    return "\n".join(lines)


def _other_vocab_table(rows: dict[str, dict[str, dict]]) -> str:
    lines = ["| objective | full logits: peak GiB / s | lit_kd chunked: peak GiB | peak × full | time × full "
             "| grad diff | loss × its matmuls |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for objective, paths in rows.items():
        full, chunked = paths.get("full"), paths.get("chunked")
        if full is None or chunked is None or "peak_ratio" not in chunked:
            continue
        lines.append(f"| {objective} | {full['peak'] / GIB:.2f} / {full['seconds']:.1f} | {chunked['peak'] / GIB:.2f} "
                     f"| {chunked['peak_ratio']:.3f} | {chunked['time_ratio']:.2f} | {chunked['grad_diff']:.1e} "
                     f"| {over_matmuls(chunked)} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
