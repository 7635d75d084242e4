"""FKL and RKL closed-form gradients, the masked mean, and the registry's errors. (Values, gradcheck and
numerics of every objective, FKL and RKL included, are in test_objectives.py.)"""

from __future__ import annotations

import pytest
import torch

from lit_kd.losses import LossConfig, fkl, get_objective, masked_mean, rkl
from lit_kd.losses.reference import fixed_input


# objectives.md §6: (τ = 1, τ = 3, τ = 3 with τ²)
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
