"""Batched generation with KV cache vs one prompt at a time, and lit_kd's generation vs transformers' own sampling:
tokens/s side by side in one run.

    python benchmarks/generation_speed.py                       # the demo's student (configs/demo.yaml)
    python benchmarks/generation_speed.py --ckpt logs/demo/version_0/checkpoints/best-....ckpt
    python benchmarks/generation_speed.py --model teacher --new-tokens 64

The same prompts (the first N demo instructions) and the same model at every batch size; every
response is forced to exactly ``--new-tokens`` tokens (``min_new_tokens``) so each setting produces
the same number of tokens. Prints tokens/s per batch size and the speed-up over batch size 1. At each batch size
the same prompts also go through ``model.generate(do_sample=True, top_k=0)`` as a user would call it
(``torch.multinomial``, the ``nn.Linear`` head), then through ``generate_ids`` with only its sampler
(``InverseCdfSampler``) and with its CPU head as well (``RowsAsColumnsHead``): the ratios say what each saves.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from record import write_record

from lit_kd.data import load_records
from lit_kd.data.rendering import DollyRendering
from lit_kd.eval import generate as generation
from lit_kd.eval.generate import SamplingConfig, encode_prompts, generate_ids
from lit_kd.modules.loading import module_from_checkpoint, module_from_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml", help="fit config whose (untrained) student is used")
    parser.add_argument("--ckpt", default=None, help="a lit_kd checkpoint instead of --config")
    parser.add_argument("--model", default="student", choices=["student", "teacher"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    module = module_from_checkpoint(args.ckpt) if args.ckpt else module_from_config(args.config)
    model = (module.student if args.model == "student" else module.teacher).to(args.device)
    tokenizer = module.tokenizer
    records = load_records("data/demo/instructions.jsonl")[: args.prompts]
    prompts = encode_prompts(DollyRendering(tokenizer), records, SamplingConfig(max_new_tokens=args.new_tokens))
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters on {args.device}; "
          f"{len(prompts)} prompts, {args.new_tokens} new tokens each")  # fmt: skip

    generate_ids(model, tokenizer, prompts[:2], SamplingConfig(max_new_tokens=4, batch_size=2), seed=0)  # warm-up
    rates, measured = {}, []
    for batch_size in args.batch_sizes:
        seconds = {way: timed(way, model, tokenizer, prompts, batch_size, args) for way in WAYS}
        tokens = len(prompts) * args.new_tokens
        rates[batch_size] = tokens / seconds["lit_kd"]
        measured.append({"batch_size": batch_size, "tokens": tokens, "seconds": seconds["lit_kd"],
                         "transformers_seconds": seconds["transformers"], "sampler_seconds": seconds["sampler"]})  # fmt: skip
        print(f"batch size {batch_size:3d}: {tokens} tokens in {seconds['lit_kd']:7.2f} s = {rates[batch_size]:8.1f} "
              f"tokens/s; transformers' sampling {seconds['transformers']:.2f} s "
              f"({seconds['transformers'] / seconds['lit_kd']:.2f}x lit_kd's time), lit_kd's sampler alone "
              f"{seconds['sampler']:.2f} s", flush=True)  # fmt: skip
    baseline = rates[args.batch_sizes[0]]
    for batch_size, rate in rates.items():
        print(f"speed-up of batch size {batch_size} over one prompt at a time: {rate / baseline:.2f}x")
    results = {"config": args.config, "ckpt": args.ckpt, "model": args.model, "device": args.device,
               "parameters": sum(p.numel() for p in model.parameters()), "prompts": len(prompts),
               "new_tokens": args.new_tokens, "batch_sizes": measured}  # fmt: skip
    write_record(record_name(args), results)


WAYS = ("transformers", "sampler", "lit_kd")


def timed(way: str, model, tokenizer, prompts: list[list[int]], batch_size: int, args: argparse.Namespace) -> float:
    """Seconds to generate ``args.new_tokens`` tokens for every prompt in batches of ``batch_size``: through
    ``model.generate``'s own sampling (``transformers``), or ``generate_ids`` without (``sampler``) or with
    (``lit_kd``) its CPU head."""
    if args.device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    if way == "transformers":
        torch.manual_seed(10)
        for start in range(0, len(prompts), batch_size):
            tokenizer.padding_side = "left"
            batch = tokenizer.pad({"input_ids": prompts[start : start + batch_size]}, return_tensors="pt")
            model.generate(**batch.to(args.device), do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                           max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    else:
        settings = SamplingConfig(max_new_tokens=args.new_tokens, batch_size=batch_size)
        plain_head = nullcontext() if way == "lit_kd" else wide_head_off()
        with plain_head:
            generate_ids(model, tokenizer, prompts, settings, seed=10, min_new_tokens=args.new_tokens)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


class wide_head_off:
    """Within the block ``generate_ids`` keeps every output head as it is (no ``RowsAsColumnsHead``)."""

    def __enter__(self) -> None:
        self.saved, generation.WIDE_HEAD = generation.WIDE_HEAD, float("inf")

    def __exit__(self, *exc) -> None:
        generation.WIDE_HEAD = self.saved


def record_name(args: argparse.Namespace) -> str:
    """``generation_speed``, suffixed by the model and the device where they are not the student and the CPU."""
    device = args.device.split(":")[0]  # cuda:1 → cuda
    suffixes = [*([args.model] if args.model != "student" else []), *([device] if device != "cpu" else [])]
    return "-".join(["generation_speed", *suffixes])


def table(record: dict) -> str:
    """The README's table: tokens/s per batch size, the speed-up over the first (one prompt at a time), and the
    time of transformers' own sampling and of lit_kd's sampler alone over lit_kd's generation."""
    measured = record["results"]["batch_sizes"]
    baseline = measured[0]["tokens"] / measured[0]["seconds"]
    lines = [f"| batch size | tokens/s | × batch size {measured[0]['batch_size']} | transformers' sampling: time × "
             "| sampler only, plain head: time × |", "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in measured:
        rate = row["tokens"] / row["seconds"]
        lines.append(f"| {row['batch_size']} | {rate:.1f} | {rate / baseline:.2f} | "
                     f"{row['transformers_seconds'] / row['seconds']:.2f} | {row['sampler_seconds'] / row['seconds']:.2f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
