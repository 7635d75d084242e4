"""FSDP2 against one process and against DDP, side by side in one run on this machine's CPUs (gloo): per-process
bytes of the student's parameters, gradients and optimizer state, peak resident memory, and time per step.

    python benchmarks/fsdp.py --steps 4
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/fsdp.py --steps 4

The workload is the demo's (``configs/demo.yaml``: SmolLM2-135M-Instruct as the live teacher, vocabulary 49,152,
the demo's data, batch 8, fp32) with a larger student: ``--layers`` of the teacher's 30 (default 20: about 99M
parameters, the tied embeddings included). Each setting is a fresh ``torch.distributed.run`` launch of this file
(Lightning's TorchElasticEnvironment), fitting ``--steps`` optimizer steps from the same seed (no validation, no
checkpoints); the time per step is the median after the first step; the training peak is the growth of resident
memory during the training loop (sampled every 5 ms), the whole-life peak includes loading the models (the GGUF
teacher's conversion dominates it); the bytes are each process's local shards. On a GPU machine
(``benchmarks/gpu_check.sh``): ``--accelerator cuda --devices N --precision bf16-mixed`` adds MFU (FLOPs from
``DistillModule.flops_per_batch``, peak from Lightning's ``get_available_flops``) and the peak CUDA memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import loaded_sources, write_record

ROOT = Path(__file__).resolve().parents[1]


def settings(devices: int) -> dict[str, tuple[int, str | None, str]]:
    """name: (processes, strategy, chunk_size)."""
    return {
        "1 process, chunked": (1, None, "512"),
        f"FSDP2 x{devices}, chunked": (devices, "fsdp", "512"),
        f"FSDP2 x{devices}, full logits": (devices, "fsdp", "null"),
        f"DDP x{devices}, chunked": (devices, "ddp", "512"),
    }


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(name: str, args: argparse.Namespace) -> None:
    import threading

    import lightning as L
    import torch
    from lightning.fabric.utilities.throughput import get_available_flops

    from lit_kd.modules.fsdp import local_bytes
    from lit_kd.training import build

    class Measure(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.flops: list[float] = []
            self.tokens: list[float] = []
            self.record: dict = {}
            self.peak, self.sampling = 0, False

        def sample(self) -> None:  # the training loop's peak resident memory, every 5 ms
            while self.sampling:
                self.peak = max(self.peak, resident_bytes())
                time.sleep(0.005)

        def on_train_start(self, trainer, module) -> None:
            self.start_rss = self.peak = resident_bytes()
            self.sampling, self.thread = True, threading.Thread(target=self.sample, daemon=True)
            self.thread.start()

        def on_train_end(self, trainer, module) -> None:
            self.sampling = False
            self.thread.join()
            self.record["train_peak_growth"] = self.peak - self.start_rss

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            params = list(module.student.parameters())
            self.record["parameters"] = local_bytes(params)
            self.record["gradients"] = local_bytes(p.grad for p in params if p.grad is not None)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if module.device.type == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.started)
            self.flops.append(module.flops_per_batch)
            self.tokens.append(float(module.batch_size_seen[0]))
            states = trainer.optimizers[0].state.values()
            kept = (t for s in states for t in s.values() if torch.is_tensor(t) and t.ndim)
            self.record["optimizer"] = local_bytes(kept)

    processes, strategy, chunk = settings(args.devices)[name]
    strategy_args = {None: [], "ddp": ["--trainer.strategy", "ddp"],
                     "fsdp": ["--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml")]}[strategy]  # fmt: skip
    kept = [round(i * 29 / (args.layers - 1)) for i in range(args.layers)]
    with tempfile.TemporaryDirectory() as logs:
        run = build(
            args=["--config", str(ROOT / "configs" / "demo.yaml"), *strategy_args,
                  "--trainer.accelerator", args.accelerator, "--trainer.precision", args.precision,
                  "--trainer.devices", str(processes), "--trainer.max_steps", str(args.steps),
                  "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
                  "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", logs,
                  "--model.teacher_cache", "null", "--model.val_rouge", "null", "--model.diagnostics", "false",
                  "--model.chunk_size", chunk, "--model.student.layers", json.dumps(kept)]
        )  # fmt: skip
        measure = Measure()
        run.trainer.callbacks.append(measure)
        run.trainer.fit(run.module, datamodule=run.datamodule)
    measure.record["seconds_per_step"] = statistics.median(measure.times[1:] or measure.times)
    measure.record["tokens_per_second"] = sum(measure.tokens[1:]) / max(sum(measure.times[1:]), 1e-9)
    measure.record["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    device = run.module.device
    if device.type == "cuda":  # model FLOPs utilization of this process's GPU (bf16 peak)
        peak = get_available_flops(device, torch.bfloat16)
        measure.record["mfu"] = sum(measure.flops[1:]) / max(sum(measure.times[1:]), 1e-9) / peak if peak else None
        measure.record["peak_cuda"] = torch.cuda.max_memory_allocated(device)
    measure.record["student_parameters"] = run.module.student_parameters
    measure.record["sources"] = loaded_sources()
    rank = int(os.environ.get("RANK", 0))
    (args.out / f"rank{rank}.json").write_text(json.dumps(measure.record))


def launch(name: str, args: argparse.Namespace) -> list[dict]:
    processes = settings(args.devices)[name][0]
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   __file__, "--worker", name, "--steps", str(args.steps), "--layers", str(args.layers),
                   "--accelerator", args.accelerator, "--devices", str(args.devices), "--precision", args.precision,
                   "--out", out]  # fmt: skip
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{name} failed:\n{result.stderr[-4000:]}")
        return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", type=int, default=20, help="teacher layers kept in the student (of 30)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2, help="processes of the FSDP2 and DDP settings")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    names = list(settings(args.devices))

    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; {os.cpu_count()} CPUs; "
          f"{args.steps} steps; student: {args.layers} of the teacher's 30 layers; {args.accelerator}, "
          f"{args.precision}", flush=True)  # fmt: skip
    results = {}
    for name in names:
        results[name] = launch(name, args)
        print(f"  measured {name}", flush=True)
    print(f"\nstudent: {results['1 process, chunked'][0]['student_parameters']:,} parameters (fp32)\n")
    cuda = args.accelerator == "cuda"
    sources = {path for ranks in results.values() for r in ranks for path in r.pop("sources")}
    summary = {"steps": args.steps, "layers": args.layers, "accelerator": args.accelerator, "devices": args.devices,
               "precision": args.precision, "settings": results}  # fmt: skip
    cuda_device = None
    if cuda:
        import torch

        cuda_device = torch.cuda.get_device_name(0)
    record_name = "fsdp" if args.accelerator == "cpu" else f"fsdp-{args.accelerator}"  # gpu_check.sh: fsdp-cuda
    write_record(record_name, summary, sources=sources, cuda_device=cuda_device)
    print(table({"results": summary}))


def table(record: dict) -> str:
    """The README's table (per setting: each process's bytes of parameters, gradients and AdamW state, the training
    peak, the step's time, all processes' tokens/s; on CUDA MFU and peak CUDA memory too), then FSDP2's ratios."""
    results = record["results"]
    cuda = results["accelerator"] == "cuda"
    mb = 1 / 2**20
    lines = ["| setting | params MB / process | grads MB | AdamW state MB | training peak RSS growth GB | s / step | "
             "tokens/s (all) |" + (" MFU | peak CUDA GB |" if cuda else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else "")]  # fmt: skip
    for name, ranks in results["settings"].items():
        r = ranks[0]
        growth = max(x["train_peak_growth"] for x in ranks) / 2**30
        step = max(x["seconds_per_step"] for x in ranks)
        tokens = sum(x["tokens_per_second"] for x in ranks)
        extra = ""
        if cuda:
            mfu = statistics.mean(x["mfu"] or 0.0 for x in ranks)
            extra = f" {mfu:.1%} | {max(x['peak_cuda'] for x in ranks) / 2**30:.1f} |"
        lines.append(f"| {name.replace(' x', ' ×')} | {r['parameters'] * mb:,.0f} | {r['gradients'] * mb:,.0f} | "
                     f"{r['optimizer'] * mb:,.0f} | {growth:.2f} | {step:.2f} | {tokens:,.0f} |{extra}")  # fmt: skip
    single, fsdp, full, ddp = results["settings"].values()
    state = lambda x: x["parameters"] + x["gradients"] + x["optimizer"]  # noqa: E731
    worst = lambda ranks, key: max(x[key] for x in ranks)  # noqa: E731
    state_ratio = max(state(x) for x in fsdp) / state(single[0])
    step_ratio = worst(fsdp, "seconds_per_step") / worst(ddp, "seconds_per_step")
    peak_ddp = worst(fsdp, "train_peak_growth") / worst(ddp, "train_peak_growth")
    peak_full = worst(fsdp, "train_peak_growth") / worst(full, "train_peak_growth")
    lines += ["", f"FSDP2 per process: {state_ratio:.3f}× the single process's parameters + gradients + optimizer "
              f"state; its step {step_ratio:.2f}× DDP's; its training peak {peak_ddp:.2f}× DDP's and {peak_full:.2f}× "
              "FSDP2's with full logits."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
