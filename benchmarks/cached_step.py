"""The cached KD step against its FLOP limit: the same student's LM-only step, scaled by the teacher head's FLOPs.

    python benchmarks/cached_step.py                         # the demo pair, then a GPT-2-shaped pair
    python benchmarks/cached_step.py --pairs demo --steps 8 --repeats 1

With the teacher cache, what is left of the teacher is its LM head on each response row (2·d_t·V FLOPs) and the
divergence's elementwise work. So the cached KD step cannot beat

    limit = (LM-only s/step) × (1 + teacher head FLOPs / LM-only step FLOPs)

where the LM-only step is the same student, batches and chunking at ``--model.kd_ratio 0``. The goal is a KD step
≤ 1.05 × limit. For each pair this script:

1. builds a float32 teacher cache of the pair's data (once, under ``--out``);
2. fits ``--steps`` optimizer steps from it, KD (the config's objective) and LM-only, in this process, same seed
   and batches, in the order KD, LM, LM, KD, ... for ``--repeats`` rounds; each step is timed (batch start to
   batch end: forward, backward, optimizer), the first step of each fit left out; s/step is the median;
3. counts FLOPs on the same batches with ``torch.utils.flop_counter.FlopCounterMode``: the LM-only step's forward
   and backward (through the full-logits path, ``chunk_size: null``, whose matmuls are the chunked path's), and the
   teacher head's 2·d_t·V per response row;
4. profiles one KD and one LM-only forward + backward (``torch.profiler``) and prints the operators whose self time
   grows most from LM-only to KD: where the remainder above the limit goes.

Pairs: ``demo`` is ``configs/demo.yaml`` (SmolLM2-135M-Instruct → its 6 cut layers, d 576, V 49,152). ``gpt2`` is
GPT-2-shaped, with random weights over the demo's tokenizer (V 49,152): a 2-layer teacher of GPT-2 XL's width
(d 1,600, 25 heads; only its final hidden states are cached, so its depth does not change the cached step) and a
GPT-2 Base student (12 layers, d 768, 12 heads, ~124 M parameters).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from record import write_record
from teacher_cache import run_for
from torch.utils.flop_counter import FlopCounterMode

from lit_kd.data.tokenize import response_mask
from lit_kd.models.loading import load_tokenizer
from lit_kd.teacher.build import write_teacher_cache
from lit_kd.teacher.cache import TeacherCache

GPT2_TEACHER = {"model_type": "gpt2", "n_layer": 2, "n_embd": 1600, "n_head": 25, "n_positions": 1024,
                "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}  # fmt: skip
GPT2_STUDENT = {**GPT2_TEACHER, "n_layer": 12, "n_embd": 768, "n_head": 12}
GOAL = 1.05
CONFIG = ["configs/demo.yaml"]
"""``--config``: the pairs' base (the ``demo`` pair is this config as it is)."""


class StepTimer(L.Callback):
    """Seconds of every training step, from batch start to batch end (forward, backward, optimizer step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seconds.append(time.perf_counter() - self.started)


def pair_arguments(pair: str, out: Path) -> list[str]:
    """The options that make ``pair`` from ``configs/demo.yaml`` (none for the demo pair itself)."""
    if pair == "demo":
        return []
    tokenizer = out / "tokenizer"
    if not (tokenizer / "tokenizer_config.json").is_file():  # the demo teacher's tokenizer, saved once
        run = run_for(CONFIG[0], out / "logs", [])
        load_tokenizer(run.module.teacher_config, "model.teacher").save_pretrained(tokenizer)
    return ["--model.teacher.gguf_file", "null", "--model.teacher.config", json.dumps(GPT2_TEACHER),
            "--model.teacher.tokenizer", str(tokenizer), "--model.student.layers", "null",
            "--model.student.config", json.dumps(GPT2_STUDENT)]  # fmt: skip


def timed_steps(extra: list[str], out: Path, steps: int) -> list[float]:
    run = run_for(CONFIG[0], out / "logs", ["--trainer.max_steps", str(steps), *extra])
    timer = StepTimer()
    run.trainer.callbacks.append(timer)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    return timer.seconds[1:]


def first_batches(extra: list[str], out: Path, count: int):
    """The module (built, in train mode) and the first ``count`` training batches of a run with ``extra``."""
    run = run_for(CONFIG[0], out / "logs", extra)
    run.datamodule.setup("fit")
    run.module.configure_model()
    run.module.train()
    loader = run.datamodule.train_dataloader()
    return run.module, [batch for _, batch in zip(range(count), loader)]


def step_flops(module, batch) -> int:
    """FLOPs of the forward and backward of ``module.compute_losses`` on ``batch`` (the optimizer's aside)."""
    with FlopCounterMode(display=False) as counter:
        module.compute_losses(batch, "train").loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def profile_ops(module, batch, repeats: int = 2) -> dict[str, float]:
    """Self CPU seconds per operator over ``repeats`` forward + backward passes of ``module`` on ``batch``."""
    module.compute_losses(batch, "train").loss.backward()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            module.compute_losses(batch, "train").loss.backward()
    module.zero_grad(set_to_none=True)
    return {event.key: event.self_cpu_time_total / 1e6 / repeats for event in profiler.key_averages()}


def measure_pair(pair: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / pair
    extra = pair_arguments(pair, out)
    cache = out / "cache"
    if not (cache / "manifest.json").is_file():
        run = run_for(CONFIG[0], out / "logs", extra)
        started = time.perf_counter()
        write_teacher_cache(run.module.teacher_config, run.module.tokenizer, run.datamodule, cache, dtype="float32")
        print(f"[{pair}] built the teacher cache in {time.perf_counter() - started:.1f} s", flush=True)
    kd = [*extra, "--model.teacher_cache", str(cache)]
    lm = [*kd, "--model.kd_ratio", "0"]
    times: dict[str, list[float]] = {"kd": [], "lm": []}
    for round_ in range(args.repeats):
        for name in ("kd", "lm") if round_ % 2 == 0 else ("lm", "kd"):
            times[name] += timed_steps(kd if name == "kd" else lm, out, args.steps)
    kd_step, lm_step = statistics.median(times["kd"]), statistics.median(times["lm"])

    module, batches = first_batches([*lm, "--model.chunk_size", "null"], out, args.steps)
    lm_flops = sum(step_flops(module, batch) for batch in batches)
    rows = sum(int(response_mask(batch["labels"]).sum()) for batch in batches)
    vocab, width = TeacherCache.open(cache).head.weight.shape
    head_flops = 2 * width * vocab * rows
    limit = lm_step * (1 + head_flops / lm_flops)
    print(f"[{pair}] over the first {len(batches)} batches ({rows:,} response rows): LM-only step "
          f"{lm_flops / 1e12:.3f} TFLOP, teacher head {head_flops / 1e12:.3f} TFLOP (2·{width}·{vocab:,} per row): "
          f"limit = LM-only × {1 + head_flops / lm_flops:.3f}", flush=True)  # fmt: skip
    print(f"[{pair}] s/step (median of {len(times['kd'])}): KD {kd_step:.3f}, LM-only {lm_step:.3f}, limit "
          f"{limit:.3f}: KD / limit = {kd_step / limit:.3f} (goal ≤ {GOAL})", flush=True)  # fmt: skip

    kd_module, kd_batches = first_batches(kd, out, 1)
    lm_module, lm_batches = first_batches(lm, out, 1)
    kd_ops, lm_ops = profile_ops(kd_module, kd_batches[0]), profile_ops(lm_module, lm_batches[0])
    growth = sorted(((kd_ops.get(k, 0.0) - lm_ops.get(k, 0.0), k) for k in set(kd_ops) | set(lm_ops)), reverse=True)
    extra_ops = [{"op": k, "kd_s": kd_ops.get(k, 0.0), "lm_s": lm_ops.get(k, 0.0)} for d, k in growth[:8] if d > 0]
    total = sum(kd_ops.values()) - sum(lm_ops.values())
    print(f"[{pair}] profile of one forward + backward, KD − LM-only: {total:+.3f} s; the operators that grow most:")
    for op in extra_ops:
        print(f"    {op['op']:<32} KD {op['kd_s']:.3f} s, LM-only {op['lm_s']:.3f} s", flush=True)
    return {"pair": pair, "steps": args.steps, "repeats": args.repeats, "rows": rows, "batches": len(batches),
            "lm_flops": lm_flops, "head_flops": head_flops, "kd_step": kd_step, "lm_step": lm_step, "limit": limit,
            "kd_over_limit": kd_step / limit, "kd_times": times["kd"], "lm_times": times["lm"],
            "profile_extra_seconds": total, "profile_ops": extra_ops}  # fmt: skip


def table(record: dict) -> str:
    """The README's table: per pair, the two steps, the FLOP counts, the limit and the ratio."""
    lines = ["| pair | LM-only s/step | teacher head / LM-only step FLOPs | limit s/step | **cached KD s/step** "
             f"| **KD / limit** (goal ≤ {GOAL}) | where the rest goes (profile, KD − LM-only self time) |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for pair in record["results"]["pairs"]:
        ops = ", ".join(f"`{op['op']}` +{op['kd_s'] - op['lm_s']:.2f} s" for op in pair["profile_ops"][:4])
        lines.append(f"| {pair['pair']} | {pair['lm_step']:.2f} | {pair['head_flops'] / pair['lm_flops']:.3f} "
                     f"| {pair['limit']:.2f} | **{pair['kd_step']:.2f}** | **{pair['kd_over_limit']:.2f}** "
                     f"| {ops} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="demo,gpt2", help="demo, gpt2 or both")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per timed fit")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (KD, LM-only), the order alternating")
    parser.add_argument("--out", default="logs/benchmarks/cached_step")
    parser.add_argument("--config", default=CONFIG[0], help="the base config (``demo``: it as it is)")
    args = parser.parse_args()
    CONFIG[0] = args.config
    unknown = [p for p in args.pairs.split(",") if p not in ("demo", "gpt2")]
    if unknown:
        parser.error(f"--pairs: unknown {', '.join(unknown)}; choose demo, gpt2 or both")
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, torch threads "
          f"{torch.get_num_threads()}", flush=True)  # fmt: skip
    pairs = [measure_pair(pair, args) for pair in args.pairs.split(",")]
    write_record("cached_step", {"config": args.config, "pairs": pairs})


if __name__ == "__main__":
    main()
