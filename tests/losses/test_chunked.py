"""The chunked, fused-head loss equals the full-logits loss, value and gradients, for every objective."""

from __future__ import annotations

import pytest
import torch

from lit_kd.losses import OBJECTIVES, LossConfig
from lit_kd.losses.chunked import chunked_token_sums, token_sums_from_logits
from lit_kd.models.head import OutputHead

N, D_STUDENT, D_TEACHER, V = 29, 12, 20, 40
MASKED = [3, 17]  # vocabulary entries masked with -inf in both models (e.g. tokens a tokenizer never emits)


def problem(dtype: torch.dtype, padded_rows: int = 5):
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(N, D_STUDENT, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(V + padded_rows, D_STUDENT, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(V + padded_rows, generator=generator, dtype=dtype)
    bias[MASKED] = float("-inf")
    bias.requires_grad_(True)
    teacher_hidden = torch.randn(N, D_TEACHER, generator=generator, dtype=dtype)
    teacher_weight = 2 * torch.randn(V, D_TEACHER, generator=generator, dtype=dtype)
    teacher_bias = torch.zeros(V, dtype=dtype)
    teacher_bias[MASKED] = float("-inf")
    targets = torch.randint(0, V, (N,), generator=generator)
    targets[torch.isin(targets, torch.tensor(MASKED))] = 0
    return hidden, OutputHead(weight, bias, V), teacher_hidden, OutputHead(teacher_weight, teacher_bias), targets


@pytest.mark.parametrize("kd_ratio", [1.0, 0.35])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_chunked_equals_full_logits_value_and_gradients(name, kd_ratio):
    hidden, head, teacher_hidden, teacher_head, targets = problem(torch.float64)
    config = LossConfig(name, tau=2.5, tau_squared_scaling=kd_ratio < 1)
    full = token_sums_from_logits(head.logits(hidden), teacher_head.logits(teacher_hidden), targets, config, kd_ratio)
    expected = torch.autograd.grad(full.loss * 0.7, [hidden, head.weight, head.bias])
    for chunk_size in (1, 8, N, 1000):
        chunked = chunked_token_sums(hidden, head, targets, config, kd_ratio, chunk_size, teacher_hidden, teacher_head)
        got = torch.autograd.grad(chunked.loss * 0.7, [hidden, head.weight, head.bias])
        assert chunked.tokens == full.tokens == N and chunked.problems == full.problems == []
        torch.testing.assert_close(chunked.loss.detach(), full.loss.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(chunked.kd_loss, full.kd_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(chunked.lm_loss, full.lm_loss, rtol=1e-12, atol=0)
        for a, b in zip(got, expected):
            assert torch.isfinite(a).all()  # -inf logits give neither NaN values nor NaN gradients
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_chunked_gradients_match_in_float32_to_1e_5(name):
    hidden, head, teacher_hidden, teacher_head, targets = problem(torch.float32)
    config = LossConfig(name, tau=2.0)
    full = token_sums_from_logits(head.logits(hidden), teacher_head.logits(teacher_hidden), targets, config, 0.6)
    expected = torch.autograd.grad(full.loss, [hidden, head.weight])
    chunked = chunked_token_sums(hidden, head, targets, config, 0.6, 6, teacher_hidden, teacher_head)
    got = torch.autograd.grad(chunked.loss, [hidden, head.weight])
    for a, b in zip(got, expected):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_lm_only_and_no_grad_and_diagnostics():
    hidden, head, teacher_hidden, teacher_head, targets = problem(torch.float64)
    config = LossConfig("fkl", tau=2.0)
    lm_only = chunked_token_sums(hidden, head, targets, config, 0.0, 4)
    full = token_sums_from_logits(head.logits(hidden), None, targets, config, 0.0)
    assert lm_only.kd_loss is None and full.kd_loss is None
    torch.testing.assert_close(lm_only.loss.detach(), full.loss.detach())
    with torch.no_grad():  # validation: no gradient buffers
        quiet = chunked_token_sums(hidden, head, targets, config, 1.0, 4, teacher_hidden, teacher_head)
    assert not quiet.loss.requires_grad
    diag_full = token_sums_from_logits(
        head.logits(hidden), teacher_head.logits(teacher_hidden), targets, config, 1.0, diagnostics=True
    ).diagnostics
    diag_chunked = chunked_token_sums(
        hidden, head, targets, config, 1.0, 4, teacher_hidden, teacher_head, diagnostics=True
    ).diagnostics
    assert diag_full.keys() == diag_chunked.keys()
    for key in diag_full:
        torch.testing.assert_close(diag_chunked[key].double(), diag_full[key].double(), rtol=1e-6, atol=1e-9)


def test_nonfinite_logits_are_reported_per_model():
    hidden, head, teacher_hidden, teacher_head, targets = problem(torch.float32)
    teacher_hidden = teacher_hidden.clone()
    teacher_hidden[3, 0] = float("nan")
    sums = chunked_token_sums(hidden, head, targets, LossConfig("rkl"), 1.0, 8, teacher_hidden, teacher_head)
    assert sums.problems == ["NaN in teacher logits"]


def test_the_ce_only_logged_at_kd_ratio_1_carries_no_graph():
    from lit_kd.losses.chunked import token_terms

    torch.manual_seed(0)
    student = torch.randn(4, 9, requires_grad=True)
    teacher, targets = torch.randn(4, 9), torch.randint(0, 9, (4,))
    config = LossConfig(name="fkl", tau=2.0)
    combined, ce, kd = token_terms(student, teacher, targets, config, 1.0)
    assert ce.grad_fn is None and combined.grad_fn is not None  # CE is logged, not differentiated
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(student.detach(), targets, reduction="none"))
    mixed, ce_mixed, _ = token_terms(student, teacher, targets, config, 0.5)
    assert ce_mixed.grad_fn is not None
    torch.testing.assert_close(mixed, 0.5 * ce_mixed + 0.5 * kd.values)


@pytest.mark.parametrize(
    "options, autograd",
    [({"name": "fkl"}, False), ({"name": "akl"}, False), ({"name": "drkl"}, False), ({"name": "ab"}, False),
     ({"name": "ab", "ab_alpha": 0.0}, True), ({"name": "js", "tau_rule": "logit_standardization"}, True)],
)  # fmt: skip
def test_objectives_with_a_fused_kernel_take_no_autograd_pass(options, autograd, monkeypatch):
    import lit_kd.losses.chunked as chunked

    calls = []
    original = chunked._autograd_chunk
    monkeypatch.setattr(chunked, "_autograd_chunk", lambda *a, **k: calls.append(1) or original(*a, **k))
    hidden, head, teacher_hidden, teacher_head, targets = problem(torch.float64)
    config = LossConfig(**options, tau=2.0)
    chunked_token_sums(hidden, head, targets, config, 1.0, 8, teacher_hidden, teacher_head).loss.backward()
    assert (len(calls) > 0) == autograd and hidden.grad is not None
