"""FKL and RKL: values against float64 references and the doc's fixed inputs, closed-form gradients,
gradcheck, −inf masks, extreme logits, and the registry's errors."""

from __future__ import annotations

import math

import pytest
import torch

from lit_kd.cli.objectives import fixed_input
from lit_kd.losses import LossConfig, distillation_loss, fkl, get_objective, masked_mean, rkl

# objectives.md §6: (τ = 1, τ = 3, τ = 3 with τ²)
DOC_VALUES = {
    "fkl": (3.3677008313, 0.4515390295, 4.0638512655),
    "rkl": (2.8694257585, 0.4330032250, 3.8970290246),
}


def reference_kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Plain float64 Σ a (log a − log b), written independently of lit_kd."""
    a = log_a.double().exp()
    return (a * (log_a.double() - log_b.double())).sum(-1)


@pytest.mark.parametrize("name", sorted(DOC_VALUES))
def test_fixed_input_table(name):
    zs, zt, target, mask = fixed_input()
    for tau, scaled, expected in ((1.0, False, 0), (3.0, False, 1), (3.0, True, 2)):
        config = LossConfig(name=name, tau=tau, tau_squared_scaling=scaled)
        value = distillation_loss(config, zs.float(), zt.float(), mask=mask, targets=target)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(DOC_VALUES[name][expected], abs=2e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_values_match_float64_reference(tau):
    zs, zt, _, _ = fixed_input()
    log_p, log_q = torch.log_softmax(zt / tau, -1), torch.log_softmax(zs / tau, -1)
    torch.testing.assert_close(fkl(zs.float(), zt.float(), tau).double(), reference_kl(log_p, log_q), atol=2e-6, rtol=0)
    torch.testing.assert_close(rkl(zs.float(), zt.float(), tau).double(), reference_kl(log_q, log_p), atol=2e-6, rtol=0)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_closed_form_gradients(tau):
    zs, zt, _, _ = fixed_input()
    zs = zs.clone().requires_grad_(True)
    p, q = torch.softmax(zt / tau, -1), torch.softmax(zs.detach() / tau, -1)

    (grad_fkl,) = torch.autograd.grad(fkl(zs, zt, tau).sum(), zs)
    torch.testing.assert_close(grad_fkl, (q - p) / tau)  # [T Eq. 2]

    values = rkl(zs, zt, tau)
    (grad_rkl,) = torch.autograd.grad(values.sum(), zs)
    eq3 = q / tau * (torch.log(q / p) - values.detach()[:, None])  # [T Eq. 3]
    delta = zs.detach() - zt
    eq4 = q / tau**2 * (delta - (q * delta).sum(-1, keepdim=True))  # [T Eq. 4, Prop. 2.2]
    torch.testing.assert_close(grad_rkl, eq3)
    torch.testing.assert_close(grad_rkl, eq4)


@pytest.mark.parametrize("fn", [fkl, rkl])
@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_gradcheck_float64(fn, tau):
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 7, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: fn(s, zt, tau), (zs,))


@pytest.mark.parametrize("fn", [fkl, rkl])
def test_identical_distributions_give_zero_and_values_are_nonnegative(fn):
    z = torch.randn(6, 50)
    torch.testing.assert_close(fn(z, z, 2.0), torch.zeros(6))
    assert (fn(torch.randn(6, 50), torch.randn(6, 50), 1.5) >= 0).all()


@pytest.mark.parametrize("fn", [fkl, rkl])
@pytest.mark.parametrize("tau", [0.1, 1.0, 100.0])
def test_masked_vocab_entries_give_finite_values_and_gradients(fn, tau):
    zs = torch.randn(4, 20, requires_grad=True)
    zt = torch.randn(4, 20)
    masked = torch.zeros(4, 20, dtype=torch.bool)
    masked[:, 15:] = True  # the same entries masked in both models
    masked_zs = zs.masked_fill(masked, float("-inf"))
    values = fn(masked_zs, zt.masked_fill(masked, float("-inf")), tau)
    (grad,) = torch.autograd.grad(values.sum(), zs)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()
    assert (grad[masked] == 0).all()
    # dropping the masked entries is the same as never having them
    torch.testing.assert_close(values, fn(zs[:, :15], zt[:, :15], tau))


@pytest.mark.parametrize("fn", [fkl, rkl])
@pytest.mark.parametrize("tau", [0.1, 1.0, 100.0])
def test_extreme_logits_stay_finite(fn, tau):
    zs = (torch.randn(4, 30) * 1e4).requires_grad_(True)
    zt = torch.randn(4, 30) * 1e4
    values = fn(zs, zt, tau)
    (grad,) = torch.autograd.grad(values.sum(), zs)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()


def test_half_precision_inputs_are_upcast():
    zs, zt = torch.randn(3, 16), torch.randn(3, 16)
    out = fkl(zs.bfloat16(), zt.bfloat16(), 2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fkl(zs.bfloat16().float(), zt.bfloat16().float(), 2.0))


@pytest.mark.parametrize("tau", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_tau_is_refused(tau):
    with pytest.raises(ValueError, match="tau"):
        LossConfig(name="fkl", tau=tau)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown distillation loss 'kld'; valid names: .*fkl.*rkl"):
        LossConfig(name="kld")
    with pytest.raises(ValueError, match="unknown distillation loss"):
        get_objective("nope")


def test_masked_mean_is_one_token_level_mean_and_refuses_an_empty_mask():
    values = torch.tensor([1.0, 2.0, float("nan"), 4.0])
    mask = torch.tensor([True, True, False, True])
    assert masked_mean(values, mask).item() == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="no response token"):
        masked_mean(values, torch.zeros(4, dtype=torch.bool))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        fkl(torch.randn(2, 10), torch.randn(2, 12), 1.0)
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        fkl(torch.randn(2, 3, 10), torch.randn(2, 3, 10), 1.0)


def test_tau_squared_scaling_multiplies_by_tau_squared():
    zs, zt, _, mask = fixed_input()
    plain = distillation_loss(LossConfig("rkl", tau=2.5), zs, zt, mask)
    scaled = distillation_loss(LossConfig("rkl", tau=2.5, tau_squared_scaling=True), zs, zt, mask)
    assert scaled.item() == pytest.approx(plain.item() * 6.25)
    assert math.isfinite(plain.item())
