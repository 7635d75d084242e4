"""KD diagnostics: entropy, non-target mass, agreement and gradient norms against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from lit_kd.losses import LossConfig, kd_diagnostics


def test_diagnostics_match_hand_computations():
    torch.manual_seed(0)
    zs, zt = torch.randn(6, 11), torch.randn(6, 11)
    targets = torch.randint(0, 11, (6,))
    tau = 2.0
    out = kd_diagnostics(LossConfig("fkl", tau=tau), zs, zt, targets)
    p, q = torch.softmax(zt / tau, -1), torch.softmax(zs / tau, -1)
    assert out["teacher_entropy"].item() == pytest.approx(-(p * p.log()).sum(-1).mean().item(), rel=1e-5)
    assert out["teacher_nontarget_mass"].item() == pytest.approx((1 - p[range(6), targets]).mean().item(), rel=1e-5)
    agreement = (zs.argmax(-1) == zt.argmax(-1)).float().mean().item()
    assert out["top1_agreement"].item() == pytest.approx(agreement)
    grad = (q - p) / tau  # FKL's closed-form gradient
    target_part = grad[range(6), targets].abs().mean().item()
    nontarget = grad.clone()
    nontarget[range(6), targets] = 0
    assert out["kd_grad_target_norm"].item() == pytest.approx(target_part, rel=1e-5)
    assert out["kd_grad_nontarget_norm"].item() == pytest.approx(nontarget.norm(dim=-1).mean().item(), rel=1e-5)


def test_uniform_teacher_and_tau_squared_scaling():
    zs, zt = torch.randn(4, 8), torch.zeros(4, 8)
    targets = torch.zeros(4, dtype=torch.long)
    plain = kd_diagnostics(LossConfig("rkl", tau=3.0), zs, zt, targets)
    scaled = kd_diagnostics(LossConfig("rkl", tau=3.0, tau_squared_scaling=True), zs, zt, targets)
    assert plain["teacher_entropy"].item() == pytest.approx(math.log(8), rel=1e-6)
    assert plain["teacher_nontarget_mass"].item() == pytest.approx(7 / 8, rel=1e-6)
    assert scaled["kd_grad_nontarget_norm"].item() == pytest.approx(
        9 * plain["kd_grad_nontarget_norm"].item(), rel=1e-5
    )


def test_higher_tau_raises_teacher_entropy():
    zt = torch.randn(16, 50) * 3
    zs = torch.randn(16, 50)
    targets = zt.argmax(-1)
    entropies = [kd_diagnostics(LossConfig("fkl", tau=t), zs, zt, targets)["teacher_entropy"].item() for t in (1, 2, 4)]
    masses = [
        kd_diagnostics(LossConfig("fkl", tau=t), zs, zt, targets)["teacher_nontarget_mass"].item() for t in (1, 2, 4)
    ]
    assert entropies == sorted(entropies) and masses == sorted(masses)


def test_diagnostics_do_not_touch_the_student_graph():
    zs = torch.randn(3, 9, requires_grad=True)
    out = kd_diagnostics(LossConfig("drkl", tau=1.5), zs * 1.0, torch.randn(3, 9), torch.tensor([0, 1, 2]))
    assert all(not v.requires_grad and v.grad_fn is None for v in out.values())
    assert all(torch.isfinite(v) for v in out.values())
