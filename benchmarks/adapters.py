"""LoRA students against the full student, side by side in one run: the trainable and AdamW-state bytes, the
training step's peak memory and its time (``model.student.peft``, lit_kd.models.adapters).

    python benchmarks/adapters.py --config configs/demo.yaml --steps 8                       # the demo pair
    python benchmarks/adapters.py --config configs/demo.yaml --student gpt2-base --steps 8   # GPT-2-Base-shaped

Each setting (the full student, LoRA r 8, 16 and 64 on every linear layer, alpha = 2r) fits the config in a fresh
process for ``--steps`` optimizer steps with AdamW and the live teacher (no validation, no checkpoints). Measured in
that process: the trainable parameters and the optimizer's state after the fit; the growth of the resident set's peak
(``VmHWM``, reset when training starts, after the models are loaded: the step's activations, gradients and the
optimizer's state, allocated in the first step) and the seconds per step after the first. ``--student gpt2-base``
replaces the demo's student by a randomly initialised GPT-2 Base shape (12 layers, d 768, 12 heads) over the
teacher's vocabulary (49,152 entries), ~124 M parameters like GPT-2 Base's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from loss_memory import reset_peak, status_bytes  # the peak measurement of benchmarks/loss_memory.py
from record import loaded_sources, write_record

SETTINGS = {"full student": None, "LoRA r 8": 8, "LoRA r 16": 16, "LoRA r 64": 64}
GPT2_BASE = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024,
             "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}  # fmt: skip


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Measure(L.Callback):
    """The step's peak (the resident set's growth from the start of training) and the time of the steps after the
    first; the trainable and optimizer-state bytes at the end."""

    def on_train_start(self, trainer, module):
        gc.collect()
        self.baseline, self.started = reset_peak(), None  # VmHWM ← VmRSS

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = (time.perf_counter() - self.started) / max(trainer.global_step - 1, 1)
        self.peak = status_bytes("VmHWM") - self.baseline
        trainable = [p for p in module.student.parameters() if p.requires_grad]
        states = trainer.optimizers[0].state.values()
        self.trainable = sum(p.numel() for p in trainable)
        self.trainable_bytes = tensor_bytes(trainable)
        self.optimizer_bytes = tensor_bytes(t for s in states for t in s.values() if torch.is_tensor(t) and t.ndim)
        self.parameters = sum(p.numel() for p in module.student.parameters())


def child(config: str, rank: int | None, student: str, steps: int, out: Path) -> None:
    from lit_kd.training import build

    args = ["--config", config, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(out.parent),
            "--model.teacher_cache", "null", "--model.diagnostics", "false"]  # fmt: skip
    if student == "gpt2-base":
        args += ["--model.student.layers", "null", "--model.student.config", json.dumps(GPT2_BASE)]
    if rank is not None:
        args += ["--model.student.peft", json.dumps({"r": rank, "alpha": 2 * rank})]
    run = build(args)
    measure = Measure()
    run.trainer.callbacks.append(measure)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    measured = {name: getattr(measure, name) for name in
                ("seconds", "peak", "trainable", "trainable_bytes", "optimizer_bytes", "parameters")}  # fmt: skip
    layers = getattr(getattr(run.module.student, "config", None), "num_hidden_layers", None)
    out.write_text(json.dumps({**measured, "layers": layers, "sources": loaded_sources()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--student", choices=["config", "gpt2-base"], default="config")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="logs/benchmarks/adapters")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one setting, in its own process
    args = parser.parse_args()
    if args.child is not None:
        name, out = args.child.split("=", 1)
        child(args.config, SETTINGS[name], args.student, args.steps, Path(out))
        return
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, torch threads "
          f"{torch.get_num_threads()}, {args.config}, student {args.student}, {args.steps} steps", flush=True)
    results, sources = {}, set()
    for name in SETTINGS:
        out = Path(args.out) / f"{args.student}-{name.replace(' ', '_')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "--config", args.config, "--student", args.student, "--steps",
                   str(args.steps), "--child", f"{name}={out}"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: the fit failed\n{done.stderr[-3000:]}")
        results[name] = json.loads(out.read_text())
        sources.update(results[name].pop("sources"))
        print(f"{name}: done", flush=True)
    full = results["full student"]
    print(f"\nstudent: {full['parameters']:,} parameters\n")
    print("| student | trainable parameters | trainable + AdamW state (MB) | × full | step peak (GiB) | × full | "
          "s / step | × full |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        state = result["trainable_bytes"] + result["optimizer_bytes"]
        full_state = full["trainable_bytes"] + full["optimizer_bytes"]
        print(f"| {name} | {result['trainable']:,} | {state / 2**20:,.1f} | {state / full_state:.4f} | "
              f"{result['peak'] / 2**30:.2f} | {result['peak'] / full['peak']:.2f} | {result['seconds']:.2f} | "
              f"{result['seconds'] / full['seconds']:.2f} |")  # fmt: skip
    record_name = "adapters" if args.student == "config" else f"adapters-{args.student}"  # the README quotes both
    summary = {"config": args.config, "student": args.student, "steps": args.steps, "settings": results}
    write_record(record_name, summary, sources=sources)


def student_label(results: dict) -> str:
    """The full student as the README names it, e.g. "demo's 6-layer student (49.6 M)"."""
    full = results["settings"]["full student"]
    millions = f"{full['parameters'] / 1e6:.1f} M"
    if results["student"] == "gpt2-base":
        return (f"GPT-2-Base-shaped student ({millions}: {GPT2_BASE['n_layer']} layers, d {GPT2_BASE['n_embd']}, "
                f"the teacher's {GPT2_BASE['vocab_size']:,} entries)")  # fmt: skip
    return f"{Path(results['config']).stem}'s {full['layers']}-layer student ({millions})"


def table(record: dict) -> str:
    """The README's table: per setting, the trainable parameters, their bytes with AdamW's state, the step's peak
    and its time, each against the full student's; LoRA r 16's row is in bold."""
    results = record["results"]
    settings = results["settings"]
    full = settings["full student"]
    full_state = full["trainable_bytes"] + full["optimizer_bytes"]
    lines = ["| student (alpha = 2r, every linear layer) | trainable parameters | trainable + AdamW state | × full | "
             "step peak (GiB) | × full | s / step | × full |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, result in settings.items():
        state = result["trainable_bytes"] + result["optimizer_bytes"]
        state_ratio, peak_ratio = f"{state / full_state:.4f}", f"{result['peak'] / full['peak']:.2f}"
        label = f"{student_label(results)}: full" if name == "full student" else name
        if name == "LoRA r 16":
            label, state_ratio, peak_ratio = (f"**{text}**" for text in (label, state_ratio, peak_ratio))
        lines.append(f"| {label} | {result['trainable']:,} | {state / 2**20:,.1f} MB | {state_ratio} | "
                     f"{result['peak'] / 2**30:.2f} | {peak_ratio} | {result['seconds']:.2f} | "
                     f"{result['seconds'] / full['seconds']:.2f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
