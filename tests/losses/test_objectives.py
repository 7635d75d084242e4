"""All ten objectives: the doc's fixed-input table, independent float64 references, gradcheck, the
documented limits and bounds, and finite values and gradients on hostile inputs."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from lit_kd.errors import ConfigError
from lit_kd.losses import (
    OBJECTIVES,
    LossConfig,
    ab,
    akl,
    akl_head_weight,
    akl_weights,
    distillation_loss,
    drkl,
    drkl_terms,
    fkl,
    js,
    per_token_divergence,
    rkl,
    sfkl,
    srkl,
    sym_kl,
    tvd,
)
from lit_kd.losses.reference import fixed_input, fixed_input_values

NAMES = sorted(OBJECTIVES)

# objectives.md §6 (τ = 1, τ = 3, τ = 3 with τ²); defaults of §2, DRKL with γ = 0.5
DOC_TABLE = {
    "fkl": (3.3677008313, 0.4515390295, 4.0638512655),
    "rkl": (2.8694257585, 0.4330032250, 3.8970290246),
    "sym_kl": (3.1185632949, 0.4422711272, 3.9804401450),
    "js": (0.1995618869, 0.0387261859, 0.3485356727),
    "tvd": (0.7930400242, 0.3659369070, 3.2934321634),
    "sfkl": (1.5121925201, 0.3354741284, 3.0192671558),
    "srkl": (1.4768746656, 0.3296193428, 2.9665740850),
    "akl": (3.0142442495, 0.4408049011, 3.9672441098),
    "ab": (3.1467908846, 0.5934124604, 5.3407121434),
    "drkl": (1.4875890899, 0.2261625974, 2.0354633763),
}


def test_the_registry_holds_the_ten_objectives_with_cited_docstrings():
    assert set(NAMES) == set(DOC_TABLE)
    for name, objective in OBJECTIVES.items():
        doc = objective.fn.__doc__
        assert doc and "[N, V]" in doc and ("[" in doc.split("\n")[0] or "Eq." in doc), name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fixed_input_table(name, dtype):
    zs, zt, target, mask = fixed_input()
    for column, (tau, scaled) in enumerate(((1.0, False), (3.0, False), (3.0, True))):
        config = LossConfig(name=name, tau=tau, tau_squared_scaling=scaled)
        value = distillation_loss(config, zs.to(dtype), zt.to(dtype), mask=mask, targets=target).item()
        tolerance = 1e-9 if dtype == torch.float64 else 2e-6
        assert value == pytest.approx(DOC_TABLE[name][column], rel=tolerance, abs=tolerance), (tau, scaled)


# -- independent float64 references: plain probability formulas, row by row ----------------------


def _probs(logits, tau):
    z = logits / tau
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(a, b):
    return float(np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / b), 0.0)))


def reference(name: str, zs: np.ndarray, zt: np.ndarray, target: int, tau: float, **h) -> float:
    p, q = _probs(zt, tau), _probs(zs, tau)
    if name == "fkl":
        return _kl(p, q)
    if name == "rkl":
        return _kl(q, p)
    if name == "sym_kl":
        w = h.get("weight", 0.5)
        return w * _kl(p, q) + (1 - w) * _kl(q, p)
    if name == "js":
        b = h.get("beta", 0.1)
        m = b * p + (1 - b) * q
        return b * _kl(p, m) + (1 - b) * _kl(q, m)
    if name == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    if name == "sfkl":
        a = h.get("alpha", 0.1)
        return _kl(p, a * p + (1 - a) * q)
    if name == "srkl":
        a = h.get("alpha", 0.1)
        return _kl(q, (1 - a) * p + a * q)
    if name == "akl":
        mu = h.get("mu", 0.5)
        order = sorted(range(len(p)), key=lambda k: -p[k])  # Python's sort is stable
        head, mass = {order[0]}, 0.0
        for k in order:
            mass += p[k]
            if mass <= mu:
                head.add(k)
        g_head = sum(abs(p[k] - q[k]) for k in head)
        g_tail = sum(abs(p[k] - q[k]) for k in range(len(p)) if k not in head)
        return (g_head * _kl(p, q) + g_tail * _kl(q, p)) / (g_head + g_tail)
    if name == "ab":
        a, b = h.get("alpha", 0.2), h.get("beta", 0.7)
        return float(-np.sum(p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)) / (a * b))
    if name == "drkl":
        g = h.get("gamma", 0.5)
        t = target
        binary = _kl(np.array([q[t], 1 - q[t]]), np.array([p[t], 1 - p[t]]))
        keep = np.arange(len(p)) != t
        return binary + g * _kl(q[keep] / (1 - q[t]), p[keep] / (1 - p[t]))
    raise KeyError(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_values_match_independent_float64_references(name, tau):
    g = torch.Generator().manual_seed(7)
    zs = torch.randn(6, 40, generator=g, dtype=torch.float64) * 3
    zt = torch.randn(6, 40, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 40, (6,), generator=g)
    config = LossConfig(name=name, tau=tau)
    expected = [reference(name, zs[i].numpy(), zt[i].numpy(), int(target[i]), tau) for i in range(6)]
    got64 = per_token_divergence(config, zs, zt, target)
    got32 = per_token_divergence(config, zs.float(), zt.float(), target)
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got32.double().numpy(), expected, rtol=2e-5, atol=2e-6)


# -- gradients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in NAMES if n != "akl"])
@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_gradcheck_float64(name, tau):
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 7, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 3, 6])
    config = LossConfig(name=name, tau=tau)
    assert torch.autograd.gradcheck(lambda s: per_token_divergence(config, s, zt, target), (zs,))


@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_akl_gradient_is_the_weighted_fkl_rkl_gradient(tau):
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(5, 9, generator=g, dtype=torch.float64)
    w_head, w_tail = akl_weights(torch.log_softmax(zt / tau, -1), torch.log_softmax(zs.detach() / tau, -1), 0.5)
    assert not w_head.requires_grad
    (grad,) = torch.autograd.grad(akl(zs, zt, tau).sum(), zs)
    (grad_f,) = torch.autograd.grad(fkl(zs, zt, tau).sum(), zs)
    (grad_r,) = torch.autograd.grad(rkl(zs, zt, tau).sum(), zs)
    torch.testing.assert_close(grad, w_head[:, None] * grad_f + w_tail[:, None] * grad_r)
    # with the weights held constant, gradcheck passes
    assert torch.autograd.gradcheck(lambda s: w_head * fkl(s, zt, tau) + w_tail * rkl(s, zt, tau), (zs,))


def test_proposition_2_1_logit_matching_at_high_temperature():
    """Centred logits: ∇FKL and ∇RKL → (z_s − z_t)/(Vτ²), with relative error O(1/τ)."""
    g = torch.Generator().manual_seed(11)
    V = 100
    zs = torch.randn(V, generator=g, dtype=torch.float64) * 2
    zt = torch.randn(V, generator=g, dtype=torch.float64) * 2
    zs, zt = zs - zs.mean(), zt - zt.mean()
    scaled_errors = {}
    for fn in (fkl, rkl):
        errors = []
        for tau in (10.0, 100.0, 1000.0):
            s = zs.clone()[None].requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(s, zt[None], tau).sum(), s)
            limit = (zs - zt) / (V * tau**2)
            errors.append((torch.linalg.norm(grad[0] - limit) / torch.linalg.norm(limit)).item())
        assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01
        scaled = [e * t for e, t in zip(errors, (10.0, 100.0, 1000.0))]
        assert max(scaled) / min(scaled) < 1.3  # τ·error is constant: the error is O(1/τ)
        scaled_errors[fn.__name__] = scaled[-1]
    assert 0.1 < scaled_errors["fkl"] < 10 and 0.1 < scaled_errors["rkl"] < 10


def test_proposition_2_2_rkl_gradient_in_logit_differences():
    zs, zt, _, _ = fixed_input()
    for tau in (0.5, 2.0, 7.0):
        s = zs.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(rkl(s, zt, tau).sum(), s)
        q, delta = torch.softmax(zs / tau, -1), zs - zt
        torch.testing.assert_close(grad, q / tau**2 * (delta - (q * delta).sum(-1, keepdim=True)))


# -- identities, limits and bounds ------------------------------------------------------------------


def _random(n=8, v=30, scale=3.0, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, v, generator=g, dtype=torch.float64) * scale,
        torch.randn(n, v, generator=g, dtype=torch.float64) * scale,
        torch.randint(0, v, (n,), generator=g),
    )


@pytest.mark.parametrize("name", NAMES)
def test_zero_on_identical_distributions_and_nonnegative(name):
    zs, zt, target = _random()
    config = LossConfig(name=name, tau=1.7)
    torch.testing.assert_close(per_token_divergence(config, zt, zt, target), torch.zeros(8, dtype=torch.float64))
    assert (per_token_divergence(config, zs, zt, target) >= 0).all()


def test_documented_limits():
    zs, zt, target = _random()
    for tau in (1.0, 2.5):
        torch.testing.assert_close(sfkl(zs, zt, tau, alpha=0.0), fkl(zs, zt, tau))
        torch.testing.assert_close(srkl(zs, zt, tau, alpha=0.0), rkl(zs, zt, tau))
        torch.testing.assert_close(ab(zs, zt, tau, alpha=1.0, beta=0.0), fkl(zs, zt, tau))
        torch.testing.assert_close(ab(zs, zt, tau, alpha=0.0, beta=1.0), rkl(zs, zt, tau))
        torch.testing.assert_close(sym_kl(zs, zt, tau, weight=1.0), fkl(zs, zt, tau))
        torch.testing.assert_close(sym_kl(zs, zt, tau, weight=0.0), rkl(zs, zt, tau))
        binary, non_target, q_t = drkl_terms(zs, zt, tau, target)
        torch.testing.assert_close(binary + (1 - q_t) * non_target, rkl(zs, zt, tau))  # DRKL with γ = 1 − q_t
        torch.testing.assert_close(drkl(zs, zt, tau, target, gamma=0.7), binary + 0.7 * non_target)


@pytest.mark.parametrize(
    "alpha, beta, near",
    [(0.0, 0.5, (1e-6, 0.5)), (0.5, 0.0, (0.5, 1e-6)), (0.3, -0.3, (0.3, -0.3 + 1e-6)), (0.0, 0.0, (1e-5, 1e-5))],
)
def test_ab_limits_are_continuous(alpha, beta, near):
    zs, zt, _ = _random(scale=1.0)
    exact = ab(zs, zt, 1.0, alpha=alpha, beta=beta)
    torch.testing.assert_close(ab(zs, zt, 1.0, alpha=near[0], beta=near[1]), exact, rtol=1e-4, atol=1e-6)


def test_bounds():
    zs, zt, _ = _random(scale=6.0)
    for beta in (0.1, 0.5, 0.9):
        bound = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
        assert (js(zs, zt, 1.0, beta=beta) <= bound + 1e-12).all()
    # disjoint supports attain the JSD bound and TVD = 1
    a = torch.tensor([[0.0, 0.0, -1e4, -1e4]], dtype=torch.float64)
    b = torch.tensor([[-1e4, -1e4, 0.0, 0.0]], dtype=torch.float64)
    assert js(a, b, 1.0, beta=0.5).item() == pytest.approx(math.log(2))
    assert tvd(a, b, 1.0).item() == pytest.approx(1.0)
    assert (tvd(zs, zt, 1.0) <= 1).all()
    for alpha in (0.05, 0.1, 0.5):
        assert (sfkl(a, b, 1.0, alpha=alpha) <= math.log(1 / alpha) + 1e-9).all()
        assert (srkl(a, b, 1.0, alpha=alpha) <= math.log(1 / alpha) + 1e-9).all()
        assert (sfkl(zs, zt, 1.0, alpha=alpha) <= math.log(1 / alpha)).all()


def test_akl_equals_fkl_when_the_tail_gap_is_zero():
    teacher = torch.tensor([[2.0, 1.9, -1.0, -1.0]], dtype=torch.float64)  # p ≈ [.499, .451, .025, .025]
    student = torch.tensor([[1.9, 2.0, -1.0, -1.0]], dtype=torch.float64)  # head swapped, same tail
    log_p, log_q = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    w_head, w_tail = akl_weights(log_p, log_q, mu=0.96)  # head = the top two tokens
    assert w_tail.item() == pytest.approx(0.0, abs=1e-12) and w_head.item() == pytest.approx(1.0)
    torch.testing.assert_close(akl(student, teacher, 1.0, mu=0.96), fkl(student, teacher, 1.0))
    # a smaller μ puts the second token in the tail, which then carries RKL weight
    w_head, w_tail = akl_weights(log_p, log_q, mu=0.5)
    assert w_tail.item() > 0.3
    # p = q: both gaps are zero, the weights are ½, ½ (the authors' code gives 0/0 = NaN)
    assert [w.item() for w in akl_weights(log_p, log_p, mu=0.5)] == [0.5, 0.5]


def head_weight_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, teacher logits, student logits) at shapes where the bins matter, float64."""
    g = torch.Generator().manual_seed(5)
    V = 3000
    flat_t, flat_s = torch.randn(6, V, generator=g, dtype=torch.float64) * 0.5, torch.randn(6, V, generator=g,
                                                                                          dtype=torch.float64)
    peaked_t = torch.randn(6, V, generator=g, dtype=torch.float64) * 6
    masked_t = peaked_t.clone()
    masked_t[:, ::7] = float("-inf")
    ties_t = torch.randint(0, 4, (6, V), generator=g).to(torch.float64)  # four values: ties at every boundary
    small_t = torch.randint(0, 3, (6, 40), generator=g).to(torch.float64)
    small_t[0] = 0.0  # uniform
    small_t[1, 7] = 50.0  # one token holds everything: rank 1 alone
    return [("flat", flat_t, flat_s), ("peaked", peaked_t, flat_s), ("masked", masked_t, flat_s),
            ("ties", ties_t, flat_s), ("small", small_t, torch.randn(6, 40, generator=g, dtype=torch.float64))]


@pytest.mark.parametrize("mu", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("case", range(5))
def test_akl_head_weight_by_selection_equals_the_sort(case, mu):
    name, teacher, student = head_weight_cases()[case]
    log_p, log_q = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    expected = akl_weights(log_p, log_q, mu)[0]
    got = akl_head_weight(log_p, log_p.exp(), log_q.exp(), mu)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_akl_head_weight_sorts_only_crowded_or_nonfinite_rows(monkeypatch):
    akl_module = importlib.import_module("lit_kd.losses.akl")  # ``lit_kd.losses.akl`` is also the function

    sorted_rows = []

    def counting(log_p, log_q, mu):
        sorted_rows.append(log_p.shape[0])
        return akl_weights(log_p, log_q, mu)

    monkeypatch.setattr(akl_module, "akl_weights", counting)
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(4, 3000, generator=g, dtype=torch.float64) * 3
    teacher[1] = 0.0  # constant: its one bin holds 3,000 members
    teacher[2, 5] = float("nan")
    log_p, q = torch.log_softmax(teacher, -1), torch.softmax(torch.randn(4, 3000, generator=g, dtype=torch.float64), -1)
    weight = akl_head_weight(log_p, log_p.exp(), q, 0.5)
    assert sorted_rows == [2]
    torch.testing.assert_close(weight[[0, 1, 3]], akl_weights(log_p, q.log(), 0.5)[0][[0, 1, 3]], rtol=1e-12,
                               atol=1e-12)  # fmt: skip


# -- numerics under stress ---------------------------------------------------------------------------


def _finite_value_and_grad(name, zs, zt, target, tau):
    s = zs.clone().requires_grad_(True)
    values = per_token_divergence(LossConfig(name=name, tau=tau), s, zt, target)
    (grad,) = torch.autograd.grad(values.sum(), s)
    return values, grad


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tau", [0.1, 1.0, 100.0])
def test_masked_entries_give_finite_values_and_gradients(name, tau):
    """The DistiLLM code gives NaN gradients for RKL, Sym-KL, JS, SFKL and SRKL here (objectives.md §4.3)."""
    zs, zt = torch.randn(4, 20), torch.randn(4, 20)
    target = torch.tensor([0, 3, 5, 14])
    masked = torch.zeros(4, 20, dtype=torch.bool)
    masked[:, 15:] = True
    masked[0, 7] = True
    values, grad = _finite_value_and_grad(
        name, zs.masked_fill(masked, float("-inf")), zt.masked_fill(masked, float("-inf")), target, tau
    )
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()
    assert (grad[masked] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_float32_underflow_gives_finite_values_and_gradients(name):
    """A finite logit ~150 below the max underflows to probability 0 in float32 (NaN in DistiLLM's JS/SFKL/SRKL)."""
    zs, zt = torch.randn(3, 12), torch.randn(3, 12)
    zs[:, 4] -= 150.0
    zt[:, 4] -= 150.0
    zt[:, 9] -= 200.0
    values, grad = _finite_value_and_grad(name, zs, zt, torch.tensor([0, 1, 2]), 1.0)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()
    reference64, _ = _finite_value_and_grad(name, zs.double(), zt.double(), torch.tensor([0, 1, 2]), 1.0)
    torch.testing.assert_close(values.double(), reference64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tau", [0.1, 1.0, 100.0])
def test_extreme_logits_and_identical_models_stay_finite(name, tau):
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(4, 25, generator=g) * 1e4, torch.randn(4, 25, generator=g) * 1e4
    target = torch.tensor([1, 2, 3, 4])
    for student, teacher in ((zs, zt), (zt, zt), (zs, zs)):
        values, grad = _finite_value_and_grad(name, student, teacher, target, tau)
        assert torch.isfinite(values).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_is_upcast_to_float32(name):
    zs, zt = torch.randn(3, 16).bfloat16(), torch.randn(3, 16).bfloat16()
    target = torch.tensor([0, 1, 2])
    values = per_token_divergence(LossConfig(name=name, tau=2.0), zs, zt, target)
    assert values.dtype == torch.float32
    torch.testing.assert_close(
        values, per_token_divergence(LossConfig(name=name, tau=2.0), zs.float(), zt.float(), target)
    )


@pytest.mark.parametrize("name", NAMES)
def test_tau_squared_scaling(name):
    zs, zt, target, mask = fixed_input()
    plain = distillation_loss(LossConfig(name=name, tau=2.5), zs, zt, mask, target)
    scaled = distillation_loss(LossConfig(name=name, tau=2.5, tau_squared_scaling=True), zs, zt, mask, target)
    assert scaled.item() == pytest.approx(6.25 * plain.item())


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sym_kl_weight", 1.5, r"sym_kl_weight must be in \[0.0, 1.0\], got 1.5"),
        ("js_beta", 0.0, r"js_beta must be in \(0.0, 1.0\), got 0.0"),
        ("js_beta", 1.0, r"js_beta must be in \(0.0, 1.0\), got 1.0"),
        ("skew_alpha", -0.1, r"skew_alpha must be in \[0.0, 1.0\], got -0.1"),
        ("skew_alpha", 1.2, r"skew_alpha must be in \[0.0, 1.0\], got 1.2"),
        ("akl_mu", 2.0, r"akl_mu must be in \[0.0, 1.0\], got 2.0"),
        ("drkl_gamma", 0.0, r"drkl_gamma must be in \(0.0, inf\], got 0.0"),
        ("ab_alpha", float("nan"), "ab_alpha must be a finite number"),
        ("ab_beta", "x", "ab_beta must be a finite number"),
    ],
)
def test_hyperparameters_are_range_checked(field, value, message):
    with pytest.raises(ConfigError, match=message):
        LossConfig(name="fkl", **{field: value})


def test_hyperparameters_reach_their_objective():
    zs, zt, target = _random()
    config = LossConfig(name="js", tau=2.0, js_beta=0.5)
    torch.testing.assert_close(per_token_divergence(config, zs, zt, target), js(zs, zt, 2.0, beta=0.5))
    config = LossConfig(name="ab", tau=1.5, ab_alpha=0.5, ab_beta=0.5)
    torch.testing.assert_close(per_token_divergence(config, zs, zt, target), ab(zs, zt, 1.5, alpha=0.5, beta=0.5))
    with pytest.raises(ValueError, match="needs the label token"):
        per_token_divergence(LossConfig(name="drkl"), zs, zt, None)


def test_the_objectives_command_prints_the_fixed_input_table(capsys):
    from lit_kd.cli import main

    main(["objectives"])
    out = capsys.readouterr().out.splitlines()
    table = out[: out.index("")]  # then the cross-tokenizer paragraph
    assert len(table) == 1 + len(OBJECTIVES) and out[len(table) + 1].startswith("Across tokenizers")
    for name, (t1, t3, t3_scaled) in DOC_TABLE.items():
        row = next(line for line in out if line.startswith(f"{name} "))
        assert f"{t1:.10f}" in row and f"{t3:.10f}" in row and f"{t3_scaled:.10f}" in row, row
    assert fixed_input_values("fkl")[0] == pytest.approx(DOC_TABLE["fkl"][0], abs=1e-10)
