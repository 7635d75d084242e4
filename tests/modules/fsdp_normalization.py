"""One optimizer step of FSDP2 (Lightning's ModelParallelStrategy, ``fully_shard``) on 2 CPU processes (gloo),
2 micro-batches accumulated per process; rank 0 saves the student's full weights before and after. Run by
tests/modules/test_normalization.py (Lightning relaunches this script for rank 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.modules.ddp_normalization import RankBatches  # noqa: E402
from tests.modules.step_batches import make_module, micro_batches  # noqa: E402


def main(out: str, chunk_size: str) -> None:
    module = make_module(None if chunk_size == "none" else int(chunk_size))
    before = {k: v.double().clone() for k, v in module.student.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=1, accumulate_grad_batches=2, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=RankBatches(micro_batches(module.tokenizer)))
    sharded = [type(m).__name__ for m in module.student.modules() if "FSDP" in type(m).__name__]
    state = module.student.state_dict()  # full_tensor gathers the shards: every rank takes part
    after = {k: (v.full_tensor() if isinstance(v, DTensor) else v).double() for k, v in state.items()}
    if trainer.global_rank == 0:
        torch.save({"before": before, "after": after, "sharded_units": len(sharded)}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
