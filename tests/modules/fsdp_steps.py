"""One optimizer step of FSDP2 (Lightning's ModelParallelStrategy, ``fully_shard``) on 2 CPU processes (gloo) for
each variant of ``VARIANTS``: rank r trains on micro-batches r and r + 2 (accumulated) or r alone, and rank 0 saves
the student's full weights before and after, every rank's bytes of parameters, gradients and optimizer state, and
the number of all-gathers of the step.
Launched by tests/modules/test_normalization.py with torchrun (Lightning's TorchElasticEnvironment), so that
every variant runs in the same two processes:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/modules/fsdp_steps.py OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lit_kd.modules.fsdp import local_bytes  # noqa: E402
from tests.modules.ddp_normalization import RankBatches  # noqa: E402
from tests.modules.step_batches import make_module, micro_batches, write_micro_batch_cache  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "live teacher, full logits": {"chunk_size": None},
    "live teacher, chunked": {"chunk_size": 16},
    "live teacher, chunked, no accumulation": {"chunk_size": 16, "accumulate": 1},
    **{f"live teacher, chunked, {name}": {"chunk_size": 16, "objective": name}
       for name in ("rkl", "sym_kl", "js", "tvd", "sfkl", "srkl", "akl", "ab", "drkl")},
    "tied head, chunked": {"chunk_size": 16, "tied": True},
    "teacher cache, chunked": {"chunk_size": 16, "cache": True},
    "teacher sharded, chunked": {"chunk_size": 16, "teacher_sharding": "shard"},
    "teacher sharded, full logits": {"chunk_size": None, "teacher_sharding": "shard"},
    "AdamW state": {"chunk_size": 16, "adam": True},
    "LoRA student, chunked": {"chunk_size": 16, "lora": True},
}


class Bytes(L.Callback):
    """This rank's bytes of the student's parameters and gradients before the optimizer step, of the optimizer's
    state after it, and of the teacher's parameters between steps."""

    def __init__(self) -> None:
        self.measured: dict[str, int] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        params = list(module.student.parameters())
        self.measured["parameters"] = local_bytes(params)
        self.measured["gradients"] = local_bytes(p.grad for p in params if p.grad is not None)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        states = trainer.optimizers[0].state.values()
        self.measured["optimizer"] = local_bytes(t for s in states for t in s.values() if torch.is_tensor(t) and t.ndim)
        self.measured["teacher"] = local_bytes(module.teacher.parameters()) if module.teacher is not None else 0


class AllGathers:
    """Counts FSDP2's all-gathers (``torch.distributed.all_gather_single``, which it calls for every unshard)."""

    def __init__(self) -> None:
        self.count, self.original = 0, dist.all_gather_single

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.original(*args, **kwargs)


def full_weights(module) -> dict[str, torch.Tensor]:
    state = module.student.state_dict()  # full_tensor gathers the shards: every rank takes part
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).double() for k, v in state.items()}


def run(variant: dict[str, Any], out: Path) -> dict[str, Any]:
    options = dict(variant)
    accumulate, cache, adam = options.pop("accumulate", 2), options.pop("cache", False), options.pop("adam", False)
    if cache:  # each rank writes its own copy of the same cache
        live = make_module(options["chunk_size"], tied=options.get("tied", False))
        rank = int(os.environ["RANK"])  # set by torchrun
        options["teacher_cache"] = write_micro_batch_cache(live, out.parent / f"cache-rank{rank}")
    if adam:
        options["optimizer"] = lambda params: torch.optim.AdamW(params, lr=1e-3)
    module = make_module(**options)
    single = {"parameters": local_bytes(module.student.parameters()),
              "teacher": local_bytes(module.teacher.parameters()) if module.teacher is not None else 0}  # fmt: skip
    before = {k: v.double().clone() for k, v in module.student.state_dict().items()}
    bytes_ = Bytes()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=1, accumulate_grad_batches=accumulate, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[bytes_],
    )  # fmt: skip
    gathers = AllGathers()
    dist.all_gather_single = gathers
    try:
        trainer.fit(module, datamodule=RankBatches(micro_batches(module.tokenizer)))
    finally:
        dist.all_gather_single = gathers.original
    ranks: list[Any] = [None, None]
    dist.all_gather_object(ranks, bytes_.measured)
    units = sum(1 for m in module.student.modules() if type(m).__name__.startswith("FSDP"))
    teacher_units = sum(1 for m in module.teacher.modules() if type(m).__name__.startswith("FSDP")) if (
        module.teacher is not None) else 0  # fmt: skip
    return {"before": before, "after": full_weights(module), "bytes": ranks, "single": single, "units": units,
            "teacher_units": teacher_units, "accumulate": accumulate, "variant": variant,
            "all_gathers": gathers.count}  # fmt: skip


def main(out: str) -> None:
    results = {name: run(variant, Path(out)) for name, variant in VARIANTS.items()}
    if dist.get_rank() == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1])
