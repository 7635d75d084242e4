"""Token-exact normalization: an accumulated or multi-process step has the gradient of one big batch."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import ROOT
from tests.modules.step_batches import make_module, micro_batches, one_big_batch_gradient, response_tokens


def step_gradient(before: dict, after: dict) -> dict:
    return {name: before[name] - after[name] for name in before}  # SGD with lr = 1


def assert_same_gradient(got: dict, expected: dict, tolerance: float = 1e-6) -> None:
    for name, value in expected.items():
        difference = (got[f"{name}"] - value).abs().max() / value.abs().max().clamp_min(1e-12)
        assert difference <= tolerance, (name, float(difference))


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_an_accumulated_step_equals_one_big_batch(tmp_path, chunk_size):
    module = make_module(chunk_size).double()  # float64: the gradient is read back from the weights' change
    batches = micro_batches(module.tokenizer)[:2]
    assert [response_tokens(b) for b in batches] == [4, 70]  # very different micro-batches
    expected = one_big_batch_gradient(module, batches)
    module.student.zero_grad()
    before = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
        precision="64-true",
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert_same_gradient(step_gradient(before, module.student.state_dict()), expected)
    # what was logged is the step's token mean, not the mean of the two micro-batch means
    mean = one_big_batch_loss(make_module(chunk_size).double(), batches)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(mean, rel=1e-6)


def one_big_batch_loss(module, batches) -> float:
    from tests.modules.step_batches import MICRO_BATCHES, collate

    big = collate(module.tokenizer, [row for group in MICRO_BATCHES[: len(batches)] for row in group])
    with torch.no_grad():
        sums = module.compute_losses(big, "train")
    return float(sums.loss / sums.tokens)


@pytest.mark.parametrize("chunk_size", ["16"])
def test_a_ddp_step_on_two_processes_equals_one_big_batch(tmp_path, chunk_size):
    out = tmp_path / "weights.pt"
    script = ROOT / "tests" / "modules" / "ddp_normalization.py"
    result = subprocess.run(
        [sys.executable, str(script), str(out), chunk_size], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out)
    module = make_module(int(chunk_size)).double()
    batches = micro_batches(module.tokenizer)
    assert sorted(response_tokens(b) for b in batches) == [4, 15, 46, 70]
    expected = one_big_batch_gradient(module, batches)
    assert_same_gradient(step_gradient(saved["before"], saved["after"]), expected)


def test_an_fsdp2_step_on_two_processes_equals_one_big_batch(tmp_path):
    """FSDP2 (Lightning's ModelParallelStrategy, the student fully sharded, full logits), float32: the token-exact
    step over both processes' micro-batches equals one large batch of the same rows."""
    out = tmp_path / "weights.pt"
    script = ROOT / "tests" / "modules" / "fsdp_normalization.py"
    result = subprocess.run(
        [sys.executable, str(script), str(out), "none"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out)
    assert saved["sharded_units"] == 3  # the student's two decoder blocks and its root
    module = make_module(None).double()
    expected = one_big_batch_gradient(module, micro_batches(module.tokenizer))
    assert_same_gradient(step_gradient(saved["before"], saved["after"]), expected, tolerance=1e-5)
