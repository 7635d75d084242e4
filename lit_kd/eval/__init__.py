"""Evaluation: batched seeded generation, ROUGE-L (a torchmetrics Metric), benchmarks × seeds reports."""

from lit_kd.eval.benchmarks import BENCHMARK_FILES, PAPER_BENCHMARKS, Benchmark, load_benchmarks
from lit_kd.eval.evaluate import EvalResult, evaluate_model, results_markdown, write_results
from lit_kd.eval.generate import (
    SamplingConfig,
    decode_responses,
    encode_prompts,
    generate_ids,
    generate_responses,
)
from lit_kd.eval.rouge import RougeL, rouge_l

__all__ = [
    "BENCHMARK_FILES",
    "PAPER_BENCHMARKS",
    "Benchmark",
    "EvalResult",
    "RougeL",
    "SamplingConfig",
    "decode_responses",
    "encode_prompts",
    "evaluate_model",
    "generate_ids",
    "generate_responses",
    "load_benchmarks",
    "results_markdown",
    "rouge_l",
    "write_results",
]
