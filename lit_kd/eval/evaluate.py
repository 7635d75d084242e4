"""Benchmarks × seeds: generate, score ROUGE-L, and report mean ± std over seeds as in the paper's Table 1.

For each model, benchmark and seed: sample one response per prompt (``SamplingConfig``), score each
against its references (``RougeL``), and average over the benchmark. A benchmark's entry is the mean
± sample standard deviation (ddof = 1) of its per-seed scores; "avg" is the mean ± std over seeds of
the per-seed average across benchmarks.

Beside ROUGE-L, from the same generations: Distinct-1..4 per seed and Self-BLEU across the seeds' samples
(``lit_kd.eval.diversity``), and on the reference responses the model's mean token entropy and expected
calibration error (``lit_kd.eval.calibration``; ``calibration=False`` skips that teacher-forced pass).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel

from lit_kd.data.conversation import prompt_view
from lit_kd.data.rendering import Rendering
from lit_kd.eval.benchmarks import Benchmark
from lit_kd.eval.calibration import reference_confidence
from lit_kd.eval.diversity import DISTINCT_ORDERS, distinct_n, self_bleu
from lit_kd.eval.generate import SamplingConfig, decode_responses, encode_prompts, generate_ids
from lit_kd.eval.rouge import RougeL
from lit_kd.utils.io import atomic_write_text


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class EvalResult:
    """ROUGE-L of one model, ``scores[benchmark][seed]``, with its diversity and calibration per benchmark."""

    label: str
    scores: dict[str, dict[int, float]] = field(default_factory=dict)
    distinct: dict[str, dict[int, dict[int, float]]] = field(default_factory=dict)
    """benchmark → seed → n → Distinct-n"""
    self_bleu: dict[str, Optional[float]] = field(default_factory=dict)
    self_bleu_order: int = 4
    confidence: dict[str, dict[str, float]] = field(default_factory=dict)
    """benchmark → {"entropy", "ece"} on the reference responses"""

    def quality(self, name: str) -> dict[str, Optional[tuple[float, Optional[float]]]]:
        """A benchmark's columns beside ROUGE-L: ``distinct_n`` (mean, std over seeds), ``self_bleu``, ``entropy``
        and ``ece`` (one value each: std None), None where not measured."""
        columns: dict[str, Optional[tuple[float, Optional[float]]]] = {}
        per_seed = self.distinct.get(name, {})
        for n in DISTINCT_ORDERS:
            values = [orders[n] for orders in per_seed.values() if n in orders]
            columns[f"distinct_{n}"] = mean_std(values) if values else None
        bleu = self.self_bleu.get(name)
        columns["self_bleu"] = (bleu, None) if bleu is not None else None
        for key in ("entropy", "ece"):
            value = self.confidence.get(name, {}).get(key)
            columns[key] = (value, None) if value is not None else None
        return columns

    def benchmark(self, name: str) -> tuple[float, float]:
        return mean_std(list(self.scores[name].values()))

    def average(self) -> tuple[float, float]:
        seeds = sorted(set.intersection(*(set(per_seed) for per_seed in self.scores.values())))
        return mean_std([statistics.fmean(self.scores[b][s] for b in self.scores) for s in seeds])

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "per_seed": {b: {str(s): v for s, v in per_seed.items()} for b, per_seed in self.scores.items()},
            "mean_std": {b: self.benchmark(b) for b in self.scores} | {"avg": self.average()},
            "distinct": {b: {str(s): {str(n): v for n, v in orders.items()} for s, orders in per_seed.items()}
                         for b, per_seed in self.distinct.items()},  # fmt: skip
            "self_bleu": dict(self.self_bleu),
            "self_bleu_order": self.self_bleu_order,
            "confidence": dict(self.confidence),
        }


def new_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("examples"),
        TimeElapsedColumn(),
    )


def evaluate_model(
    model: PreTrainedModel,
    rendering: Rendering,
    benchmarks: Sequence[Benchmark],
    seeds: Sequence[int],
    settings: SamplingConfig,
    label: str,
    progress: Optional[Progress] = None,
    generations: Optional[list[dict[str, Any]]] = None,
    calibration: bool = True,
    self_bleu_order: int = 4,
) -> EvalResult:
    """Score ``model`` on every benchmark and seed, its prompts rendered by ``rendering`` (the prompt format and
    tokenizer it was trained with); append each generation to ``generations`` if given."""
    result = EvalResult(label, self_bleu_order=self_bleu_order)
    tokenizer = rendering.tokenizer
    for benchmark in benchmarks:
        result.scores[benchmark.name], result.distinct[benchmark.name] = {}, {}
        samples: list[list[str]] = [[] for _ in benchmark.records]  # per prompt, one sample per seed
        prompts = encode_prompts(rendering, benchmark.records, settings)  # the same prompts for every seed
        for seed in seeds:
            task = None
            if progress is not None:
                task = progress.add_task(f"{label} · {benchmark.name} · seed {seed}", total=len(benchmark.records))
            on_batch = (lambda n, task=task: progress.advance(task, n)) if task is not None else None
            ids = generate_ids(model, tokenizer, prompts, settings, seed, on_batch, stop_ids=rendering.stop_ids)
            outputs = decode_responses(tokenizer, ids)
            metric = RougeL()
            metric.update(outputs, [r["output"] for r in benchmark.records])
            result.scores[benchmark.name][seed] = metric.compute().item()
            result.distinct[benchmark.name][seed] = {n: distinct_n(outputs, n) for n in DISTINCT_ORDERS}
            for per_prompt, output in zip(samples, outputs):
                per_prompt.append(output)
            if generations is not None:
                for index, (record, output) in enumerate(zip(benchmark.records, outputs)):
                    generations.append(
                        {
                            "model": label,
                            "benchmark": benchmark.name,
                            "seed": seed,
                            "index": index,
                            **prompt_view(record),
                            "reference": record["output"],
                            "output": output,
                        }
                    )
        result.self_bleu[benchmark.name] = self_bleu(samples, self_bleu_order)
        if calibration:
            result.confidence[benchmark.name] = reference_confidence(
                model, rendering, benchmark.records, settings.max_length, batch_size=min(settings.batch_size, 8)
            )

    return result


def results_markdown(results: Sequence[EvalResult], title: str = "ROUGE-L") -> str:
    """The Table-1 layout: one row per model, mean ± std over seeds per benchmark and their average."""
    names = list(results[0].scores)
    seeds = sorted(next(iter(results[0].scores.values())))
    lines = [
        f"### {title} (mean ± std over seeds {', '.join(map(str, seeds))})",
        "",
        "| model | " + " | ".join(names) + " | avg |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for result in results:
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in (result.benchmark(n) for n in names)]
        mean, std = result.average()
        lines.append(f"| {result.label} | " + " | ".join(cells) + f" | {mean:.2f} ± {std:.2f} |")
    return "\n".join(lines) + "\n" + quality_markdown(results)


QUALITY_COLUMNS = {**{f"distinct_{n}": f"Distinct-{n}" for n in DISTINCT_ORDERS}, "self_bleu": "Self-BLEU",
                   "entropy": "entropy (nats)", "ece": "ECE"}  # fmt: skip


def quality_header(key: str, self_bleu_order: int = 4) -> str:
    """A quality column's header; Self-BLEU names its n-gram order (Self-BLEU-4 unless set otherwise)."""
    return f"Self-BLEU-{self_bleu_order}" if key == "self_bleu" else QUALITY_COLUMNS[key]


def quality_cell(key: str, mean: float, std: Optional[float] = None) -> str:
    """One diversity or calibration value as the tables print it: Self-BLEU (×100) with two decimals, Distinct-n,
    entropy and ECE with three; ``± std`` when there is one."""
    digits = 2 if key == "self_bleu" else 3
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def quality_markdown(results: Sequence[EvalResult]) -> str:
    """Diversity and calibration beside ROUGE-L: one row per model and benchmark (Distinct-n: mean ± std over
    seeds; Self-BLEU across the seeds; entropy and ECE on the references, seed-free)."""
    if not any(result.distinct for result in results):
        return ""
    headers = [quality_header(key, results[0].self_bleu_order) for key in QUALITY_COLUMNS]
    lines = ["", "### Diversity and calibration", "",
             "| model | benchmark | ROUGE-L | " + " | ".join(headers) + " |",
             "|---|---|" + "---:|" * (len(QUALITY_COLUMNS) + 1)]  # fmt: skip
    for result in results:
        for name in result.scores:
            rouge = "{:.2f} ± {:.2f}".format(*result.benchmark(name))
            columns = result.quality(name)
            cells = ["–" if columns[key] is None else quality_cell(key, *columns[key]) for key in QUALITY_COLUMNS]
            lines.append(f"| {result.label} | {name} | {rouge} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_csv(results: Sequence[EvalResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "benchmark", "seed", "rougeL", *(f"distinct_{n}" for n in DISTINCT_ORDERS)])
    for result in results:
        for benchmark, per_seed in result.scores.items():
            for seed, value in per_seed.items():
                distinct = result.distinct.get(benchmark, {}).get(seed, {})
                cells = [f"{distinct[n]:.4f}" if n in distinct else "" for n in DISTINCT_ORDERS]
                writer.writerow([result.label, benchmark, seed, f"{value:.4f}", *cells])
    return buffer.getvalue()


def write_results(
    out_dir: Path,
    results: Sequence[EvalResult],
    generations: Sequence[dict[str, Any]],
    settings: dict[str, Any],
) -> dict[str, Path]:
    """results.md / results.csv / results.json / generations.jsonl (each written atomically) and TensorBoard
    scalars ``eval/<benchmark>/rougeL`` (x = seed) and ``eval/<benchmark>/rougeL_mean`` under ``out_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    paths = {
        "markdown": atomic_write_text(out_dir / "results.md", results_markdown(results)),
        "csv": atomic_write_text(out_dir / "results.csv", results_csv(results)),
        "json": atomic_write_text(
            out_dir / "results.json",
            json.dumps({"settings": settings, "results": [r.to_dict() for r in results]}, indent=2) + "\n",
        ),
        "generations": atomic_write_text(
            out_dir / "generations.jsonl", "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations)
        ),
    }
    for result in results:
        with SummaryWriter(log_dir=str(out_dir / "tensorboard" / result.label)) as writer:
            for benchmark, per_seed in result.scores.items():
                for seed, value in per_seed.items():
                    writer.add_scalar(f"eval/{benchmark}/rougeL", value, global_step=seed)
                writer.add_scalar(f"eval/{benchmark}/rougeL_mean", result.benchmark(benchmark)[0], global_step=0)
            writer.add_scalar("eval/avg/rougeL_mean", result.average()[0], global_step=0)
    return paths
