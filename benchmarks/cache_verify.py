"""What verifying a teacher cache costs: every file's XXH3-128 digest is checked when a run opens the cache.

    python benchmarks/cache_verify.py                 # a 2 GiB cache (d = 1,600, float32), 3 repeats

Builds a cache of random hidden states with ``build_teacher_cache`` (the writer lit_kd uses), then times
``TeacherCache.open`` — which reads and hashes every file — and, side by side, the same files' bytes read alone
and hashed with SHA-256 for comparison. Reports GB/s and extrapolates to a GPT-2 XL Dolly cache (6.1 GB) and an
OPT-6.7B one (15.6 GB). The files are in the page cache after the build (the common case: a run right after
the build, or a sweep's runs one after another); from a cold disk the read itself is the limit.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch
from record import write_record

from lit_kd.models.head import OutputHead
from lit_kd.teacher.build import build_teacher_cache
from lit_kd.teacher.cache import CacheKey, TeacherCache

GB = 1e9
EXTRAPOLATED = {"GPT-2 XL Dolly cache, 6.1 GB": 6.1, "OPT-6.7B Dolly cache, 15.6 GB": 15.6}


def build(out: Path, gib: float, hidden: int) -> int:
    rows_per_example, examples = 256, int(gib * (1 << 30) / (256 * hidden * 4))
    key = CacheKey(teacher={"source": "random"}, tokenizer="-", template="-", max_length=512, splits={"train": "-"})
    head = OutputHead(torch.randn(1000, hidden), None)
    labels = torch.zeros(1, rows_per_example + 1, dtype=torch.long)

    def batches():
        for _ in range(examples):
            yield {"labels": labels}

    def hidden_fn(batch):
        return torch.randn(1, rows_per_example + 1, hidden)

    build_teacher_cache(out, key, head, {"train": batches}, {"train": (examples, examples * rows_per_example)},
                        hidden_fn, shard_bytes=256 << 20)  # fmt: skip
    return sum(p.stat().st_size for p in out.iterdir())


def sha256_files(folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            while piece := stream.read(16 << 20):
                digest.update(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--hidden", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        size = build(cache, args.gib, args.hidden)
        opened = min(timed(lambda: TeacherCache.open(cache)) for _ in range(args.repeats))
        sha = min(timed(lambda: sha256_files(cache)) for _ in range(args.repeats))
    print(f"cache of {size / GB:.2f} GB ({args.hidden}-wide float32 rows), best of {args.repeats}:")
    print(f"  TeacherCache.open, XXH3-128 of every file: {opened:.2f} s = {size / GB / opened:.2f} GB/s")
    print(f"  the same files hashed with SHA-256:        {sha:.2f} s = {size / GB / sha:.2f} GB/s "
          f"({sha / opened:.1f}x longer)")  # fmt: skip
    for name, gb in EXTRAPOLATED.items():
        print(f"  extrapolated, {name}: {gb / (size / GB / opened):.1f} s per run that opens it")
    write_record("cache_verify", {"hidden": args.hidden, "repeats": args.repeats, "bytes": size,
                                  "open_seconds": opened, "sha256_seconds": sha})  # fmt: skip


def table(record: dict) -> str:
    """The README's table: opening the cache (XXH3-128 of every file) against SHA-256 of the same files, best of the
    repeats, and the open extrapolated to the paper's caches."""
    results = record["results"]
    gb, opened, sha = results["bytes"] / GB, results["open_seconds"], results["sha256_seconds"]
    lines = [f"| a {gb:.2f} GB cache ({results['hidden']:,}-wide float32 rows) in the page cache, best of "
             f"{results['repeats']} | s | GB/s |", "|---|---:|---:|",
             f"| `TeacherCache.open`: XXH3-128 of every file | {opened:.2f} | {gb / opened:.1f} |",
             f"| the same files hashed with SHA-256 | {sha:.2f} | {gb / sha:.2f} |"]  # fmt: skip
    for name, size in EXTRAPOLATED.items():
        lines.append(f"| extrapolated, {name}: per run that opens it | {size / (gb / opened):.1f} | |")
    return "\n".join(lines)


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
