"""Closed-form gradients against autograd of the registered objectives, in float64: masked entries, per-row τ under
the rules that detach it, τ² scaling."""

from __future__ import annotations

import pytest
import torch

from lit_kd.losses.closed_form import CLOSED_FORMS, has_closed_form, kd_term_and_gradient
from lit_kd.losses.registry import LossConfig, kd_term

CASES = [
    {},
    {"tau_squared_scaling": True},
    {"tau_rule": "sharpness_matching"},
    {"tau_rule": "entropy_target", "tau_target_entropy": 1.2, "tau_squared_scaling": True},
]


def logits(rows: int = 7, vocab: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    student[0, 3] = teacher[0, 3] = float("-inf")  # an entry masked in both models
    student[1, :5] = teacher[1, :5] = float("-inf")
    teacher[2] *= 30  # a near one-hot teacher
    return student, teacher


@pytest.mark.parametrize("options", CASES, ids=["plain", "tau2", "sharpness", "entropy+tau2"])
@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_closed_form_equals_autograd(name, options):
    student, teacher = logits()
    hparams = {"js_beta": 0.3} if name == "js" else {"skew_alpha": 0.2} if name in ("sfkl", "srkl") else {}
    config = LossConfig(name=name, tau=1.7, **options, **hparams)
    term, gradient = kd_term_and_gradient(config, student, teacher)
    leaf = student.clone().requires_grad_(True)
    reference = kd_term(config, leaf, teacher)
    (expected,) = torch.autograd.grad(reference.values.sum(), leaf)
    torch.testing.assert_close(term.values, reference.values.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)
    assert not gradient.isnan().any() and (gradient[0, 3] == 0) and (gradient[1, :5] == 0).all()
    assert term.values.grad_fn is None and gradient.grad_fn is None


def test_no_closed_form_where_autograd_is_needed():
    assert not has_closed_form(LossConfig(name="akl"))
    assert not has_closed_form(LossConfig(name="fkl", tau_rule="logit_standardization"))
    assert kd_term_and_gradient(LossConfig(name="drkl"), *logits()) is None
