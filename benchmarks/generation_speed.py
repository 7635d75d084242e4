"""Batched generation with KV cache vs one prompt at a time: tokens/s side by side in one run.

    python benchmarks/generation_speed.py                       # the demo's student (configs/demo.yaml)
    python benchmarks/generation_speed.py --ckpt logs/demo/version_0/checkpoints/best-....ckpt
    python benchmarks/generation_speed.py --model teacher --new-tokens 64

The same prompts (the first N demo instructions) and the same model at every batch size; every
response is forced to exactly ``--new-tokens`` tokens (``min_new_tokens``) so each setting produces
the same number of tokens. Prints tokens/s per batch size and the speed-up over batch size 1.
"""

from __future__ import annotations

import argparse
import time

import torch
from record import write_record

from lit_kd.data import load_records
from lit_kd.data.rendering import DollyRendering
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
        settings = SamplingConfig(max_new_tokens=args.new_tokens, batch_size=batch_size)
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        outputs = generate_ids(model, tokenizer, prompts, settings, seed=10, min_new_tokens=args.new_tokens)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        tokens = sum(len(o) for o in outputs)
        rates[batch_size] = tokens / seconds
        measured.append({"batch_size": batch_size, "tokens": tokens, "seconds": seconds})
        print(f"batch size {batch_size:3d}: {tokens} tokens in {seconds:7.2f} s = {rates[batch_size]:8.1f} tokens/s")
    baseline = rates[args.batch_sizes[0]]
    for batch_size, rate in rates.items():
        print(f"speed-up of batch size {batch_size} over one prompt at a time: {rate / baseline:.2f}x")
    results = {"config": args.config, "ckpt": args.ckpt, "model": args.model, "device": args.device,
               "parameters": sum(p.numel() for p in model.parameters()), "prompts": len(prompts),
               "new_tokens": args.new_tokens, "batch_sizes": measured}  # fmt: skip
    write_record(record_name(args), results)


def record_name(args: argparse.Namespace) -> str:
    """``generation_speed``, suffixed by the model and the device where they are not the student and the CPU."""
    device = args.device.split(":")[0]  # cuda:1 → cuda
    suffixes = [*([args.model] if args.model != "student" else []), *([device] if device != "cpu" else [])]
    return "-".join(["generation_speed", *suffixes])


def table(record: dict) -> str:
    """The README's table: tokens/s per batch size and the speed-up over the first (one prompt at a time)."""
    measured = record["results"]["batch_sizes"]
    baseline = measured[0]["tokens"] / measured[0]["seconds"]
    lines = [f"| batch size | tokens/s | × batch size {measured[0]['batch_size']} |", "|---:|---:|---:|"]
    for row in measured:
        rate = row["tokens"] / row["seconds"]
        lines.append(f"| {row['batch_size']} | {rate:.1f} | {rate / baseline:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
