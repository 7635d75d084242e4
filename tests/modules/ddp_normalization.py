"""One optimizer step of DDP on 2 CPU processes (gloo), 2 micro-batches accumulated per process; rank 0 saves
the student's weights before and after. Run by tests/modules/test_normalization.py (Lightning relaunches this
script for rank 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.modules.step_batches import make_module, micro_batches  # noqa: E402


class RankBatches(L.LightningDataModule):
    """Rank r trains on micro-batches r and r + 2: very different token counts on the two processes."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        rank = self.trainer.global_rank
        return DataLoader([self.batches[rank], self.batches[rank + 2]], batch_size=None)


def main(out: str, chunk_size: str) -> None:
    module = make_module(None if chunk_size == "none" else int(chunk_size))
    before = {k: v.double().clone() for k, v in module.student.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=1, accumulate_grad_batches=2,
        use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, precision="64-true",
    )  # fmt: skip
    trainer.fit(module, datamodule=RankBatches(micro_batches(module.tokenizer)))
    if trainer.global_rank == 0:
        torch.save({"before": before, "after": module.student.state_dict()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
