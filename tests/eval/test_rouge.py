"""ROUGE-L against hand-computed LCS values, edge cases, and the torchmetrics Metric."""

from __future__ import annotations

import pytest
import torch

from lit_kd.eval import RougeL, rouge_l


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        # LCS "the cat on the mat" = 5 of 6 tokens on both sides: P = R = F = 5/6
        ("the cat sat on the mat", "the cat is on the mat", 100 * 5 / 6),
        # LCS 2 ("a", "c"): P = 2/3, R = 2/4, F = 2PR/(P+R) = 4/7
        ("a b c", "a x c y", 100 * 4 / 7),
        # stemming: running→run, dogs→dog; case and punctuation are ignored
        ("Running dogs!", "run dog", 100.0),
        ("completely different", "nothing shared here", 0.0),
        ("", "a reference", 0.0),  # empty prediction
        ("a prediction", "", 0.0),  # empty reference
        ("", "", 0.0),
    ],
)
def test_hand_computed_values(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_best_over_references():
    assert rouge_l("the cat sat", ["a dog ran", "the cat sat", "cat"]) == pytest.approx(100.0)
    assert rouge_l("the cat sat", ["a dog ran", "the cat"]) == pytest.approx(100 * 0.8)  # P=2/3, R=1 → F=0.8
    with pytest.raises(ValueError):
        rouge_l("x", [])


def test_metric_accumulates_the_mean_over_examples():
    metric = RougeL()
    metric.update(["the cat sat on the mat"], ["the cat is on the mat"])
    metric.update(["a b c", ""], [["a x c y"], "anything"])
    expected = (100 * 5 / 6 + 100 * 4 / 7 + 0.0) / 3
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric.update(["a", "b"], ["a"])


def test_metric_states_reset_under_inference_mode_stay_usable():
    metric = RougeL()
    with torch.inference_mode():
        metric.update(["a"], ["a"])
        metric.compute()
        metric.reset()
    metric.update(["a b"], ["a b"])  # outside inference mode: no in-place update of an inference tensor
    assert metric.compute().item() == pytest.approx(100.0)
