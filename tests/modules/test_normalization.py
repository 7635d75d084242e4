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


@pytest.fixture(scope="module")
def fsdp2_steps(tmp_path_factory) -> dict:
    """``tests/modules/fsdp_steps.py``'s variants, run once in two torchrun processes."""
    out = tmp_path_factory.mktemp("fsdp2") / "steps.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tests" / "modules" / "fsdp_steps.py"), str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def test_an_fsdp2_step_on_two_processes_equals_one_big_batch(fsdp2_steps):
    """FSDP2 (Lightning's ModelParallelStrategy, student fully sharded), float32, 2 processes with their own
    micro-batches: the step equals one large batch of the same rows (float64 reference, relative 1e-5) with a
    live teacher and full logits or the chunked loss (each of the ten objectives), without accumulation, a tied
    head, a teacher cache, a sharded teacher and LoRA adapters on a frozen student."""
    from tests.modules.fsdp_steps import VARIANTS

    assert set(fsdp2_steps) == set(VARIANTS)
    for name, result in fsdp2_steps.items():
        variant = dict(result["variant"])
        if variant.pop("adam", False):
            continue
        assert result["units"] == 3, name  # the student's two decoder blocks and its root
        assert result["teacher_units"] == (4 if variant.get("teacher_sharding") == "shard" else 0), name
        module = make_module(variant.get("chunk_size"), variant.get("objective", "fkl"), variant.get("tied", False),
                             lora=variant.get("lora", False))  # fmt: skip
        which = [0, 1, 2, 3] if result["accumulate"] == 2 else [0, 1]
        expected = one_big_batch_gradient(module.double(), micro_batches(module.tokenizer), which)
        got = step_gradient(result["before"], result["after"])
        if variant.get("lora"):  # the frozen base did not move; every adapter weight did
            assert all("lora_" in n for n in expected) and len(expected) == 28, name
            assert all(got[n].abs().max() == 0 for n in got if n not in expected), name
        if variant.get("tied"):
            assert torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"]), name
        try:
            assert_same_gradient(got, expected, tolerance=1e-5)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_fsdp2_holds_half_of_everything_on_each_of_two_processes(fsdp2_steps):
    """Per process: 1/2 of the student's parameters, gradients and AdamW state, and of a sharded teacher."""
    for name in ("AdamW state", "teacher sharded, chunked"):
        result = fsdp2_steps[name]
        single = result["single"]
        for rank in result["bytes"]:
            assert rank["parameters"] == rank["gradients"] == single["parameters"] / 2, name
    sharded = fsdp2_steps["teacher sharded, chunked"]
    assert [rank["teacher"] for rank in sharded["bytes"]] == [sharded["single"]["teacher"] / 2] * 2
    adam = fsdp2_steps["AdamW state"]["bytes"]
    assert [rank["optimizer"] for rank in adam] == [fsdp2_steps["AdamW state"]["single"]["parameters"]] * 2
    replicated = fsdp2_steps["live teacher, chunked"]
    assert [rank["teacher"] for rank in replicated["bytes"]] == [replicated["single"]["teacher"]] * 2


def test_the_chunked_loss_gathers_the_sharded_head_once_per_step(fsdp2_steps):
    """The chunk loop (5 chunks of 16 rows for 70 rows) adds no all-gather: as many as with full logits."""
    chunked, full = fsdp2_steps["live teacher, chunked"], fsdp2_steps["live teacher, full logits"]
    assert chunked["all_gathers"] == full["all_gathers"] > 0
