"""τ as a knob that moves: per-row and separate teacher/student temperatures in every objective (float64
references, gradcheck, −inf masks, underflow), the three per-token rules (bounds, never NaN, what each solves) and
the schedules; bad settings are one error naming the key."""

from __future__ import annotations

import math

import pytest
import torch

from lit_kd.errors import ConfigError
from lit_kd.losses import OBJECTIVES, LossConfig, fkl, per_token_divergence, rkl
from lit_kd.losses.chunked import chunked_token_sums, token_sums_from_logits
from lit_kd.losses.registry import kd_term
from lit_kd.losses.temperature import (
    RULES,
    entropy_at,
    entropy_target_tau,
    rule_temperatures,
    scheduled_tau,
)
from lit_kd.models.head import OutputHead

NAMES = sorted(OBJECTIVES)
RULE_NAMES = [rule for rule in RULES if rule != "none"]
TAUS = torch.tensor([0.1, 0.3, 1.0, 2.0, 7.5, 30.0, 100.0], dtype=torch.float64)


def rows(dtype=torch.float64, seed: int = 0, vocab: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """7 rows of student/teacher logits: varied scales, −inf masked entries (the same in both models), a row whose
    probabilities underflow at small τ, and label tokens that are never masked."""
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(7, vocab, generator=g, dtype=dtype) * 3
    zt = torch.randn(7, vocab, generator=g, dtype=dtype) * 3
    zs[2], zt[2] = zs[2] * 40, zt[2] * 40  # at τ = 0.3 most entries underflow to 0 in float32
    for row, columns in ((1, [3, 7]), (4, [0, 5, 11]), (6, [vocab - 1])):
        columns = [c % vocab for c in columns]
        zs[row, columns] = -math.inf
        zt[row, columns] = -math.inf
    targets = torch.tensor([1, 2, 4, 6, 8, 9, 10])
    return zs, zt, targets


def value_and_grad(name, zs, zt, targets, tau, teacher_tau=None):
    leaf = zs.clone().requires_grad_(True)
    values = per_token_divergence(LossConfig(name=name), leaf, zt, targets, tau, teacher_tau)
    (grad,) = torch.autograd.grad(values.sum(), leaf)
    return values.detach(), grad


@pytest.mark.parametrize("name", NAMES)
def test_per_row_temperatures_equal_each_row_at_its_own_scalar_temperature(name):
    """τ from 0.1 to 100 across rows, τ_t ≠ τ_s, masks and underflow: each row as if computed alone at its τ."""
    zs, zt, targets = rows()
    teacher_taus = TAUS.flip(0)
    values, grad = value_and_grad(name, zs, zt, targets, TAUS, teacher_taus)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()
    for i in range(zs.shape[0]):
        one = slice(i, i + 1)
        value, row_grad = value_and_grad(name, zs[one], zt[one], targets[one], float(TAUS[i]), float(teacher_taus[i]))
        torch.testing.assert_close(values[i], value[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[i], row_grad[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_the_plain_case_is_bit_identical(name):
    """τ_t = τ_s = τ given as a number, as a per-row tensor of τ, or by kd_term without a rule: the same bits."""
    zs, zt, targets = rows(torch.float32)
    config = LossConfig(name=name, tau=2.5)
    plain = per_token_divergence(config, zs, zt, targets)
    same = torch.full((zs.shape[0],), 2.5)
    assert torch.equal(per_token_divergence(config, zs, zt, targets, same, same), plain)
    assert torch.equal(per_token_divergence(config, zs, zt, targets, 2.5, 2.5), plain)
    assert torch.equal(kd_term(config, zs, zt, targets).values, plain)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "akl"])  # AKL's weights are detached by design
def test_gradcheck_float64_with_per_row_student_and_teacher_temperatures(name):
    zs, zt, targets = rows(vocab=8)
    zs, zt = zs[[0, 3, 5]] / 4, zt[[0, 3, 5]] / 4  # unmasked rows: gradcheck's finite differences need finite logits
    targets = targets[[0, 3, 5]] % 8
    tau_s = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    tau_t = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    config = LossConfig(name=name)
    leaf = zs.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: per_token_divergence(config, s, zt, targets, tau_s, tau_t), (leaf,))


def test_closed_form_gradients_with_separate_temperatures():
    """∂FKL/∂z_s = (q − p)/τ_s and ∂RKL/∂z_s = (q/τ_s)(log(q/p) − RKL), p at τ_t, q at τ_s, row by row."""
    zs, zt, _ = rows()
    tau_s, tau_t = TAUS, TAUS.flip(0)
    p = torch.softmax(zt / tau_t[:, None], -1)
    q = torch.softmax(zs / tau_s[:, None], -1)
    _, grad = value_and_grad("fkl", zs, zt, None, tau_s, tau_t)
    torch.testing.assert_close(grad, (q - p) / tau_s[:, None], rtol=1e-9, atol=1e-12)
    leaf = zs.clone().requires_grad_(True)
    values = rkl(leaf, zt, tau_s, tau_t)
    (grad,) = torch.autograd.grad(values.sum(), leaf)
    log_ratio = torch.where(q > 0, torch.log(q) - torch.log(p), torch.zeros_like(q))
    expected = q / tau_s[:, None] * (log_ratio - values.detach()[:, None])
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


# -- rules --------------------------------------------------------------------------------------------------


def awkward_rows(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows a rule must survive: all-equal logits, a constant student against a one-hot teacher, a teacher with one
    finite entry, huge and tiny scales, masked entries, and ordinary rows."""
    g = torch.Generator().manual_seed(3)
    vocab = 16
    zs = torch.randn(8, vocab, generator=g, dtype=dtype) * 2
    zt = torch.randn(8, vocab, generator=g, dtype=dtype) * 2
    zs[0], zt[0] = 0.0, 0.0  # all-equal logits in both
    zs[1], zt[1] = 1.5, -30.0
    zt[1, 4] = 30.0  # a constant student, a nearly one-hot teacher
    zt[2] = -math.inf
    zt[2, 7] = 0.0  # a teacher with a single finite entry (one-hot after masking)
    zs[3], zt[3] = zs[3] * 1e4, zt[3] * 1e4
    zs[4], zt[4] = zs[4] * 1e-6, zt[4] * 1e-6
    zs[5, [1, 2]] = -math.inf
    zt[5, [1, 2]] = -math.inf
    return zs, zt


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("tau", [0.1, 1.0, 4.0])
def test_a_rule_is_never_nan_never_zero_and_within_its_bounds(rule, tau):
    zs, zt = awkward_rows()
    tau_s, tau_t = rule_temperatures(rule, zs, zt, tau, 0.05, 50.0, 1.0)
    for value in (tau_s, tau_t):
        assert value.shape == (zs.shape[0],)
        assert torch.isfinite(value).all() and (value >= 0.05).all() and (value <= 50.0).all()
    config = LossConfig(name="fkl", tau=tau, tau_rule=rule, tau_min=0.05, tau_max=50.0)
    leaf = zs.clone().requires_grad_(True)
    values = kd_term(config, leaf, zt).values
    (grad,) = torch.autograd.grad(values.sum(), leaf)
    assert torch.isfinite(values).all() and torch.isfinite(grad).all()


def test_logit_standardization_is_the_z_score_pre_process_gradient_included():
    """softmax(z/(τσ)) = softmax(((z − z̄)/σ)/τ): the rule's loss and gradient equal FKL of the z-scored logits at τ
    (the authors' ``normalize``), the student's σ differentiated through."""
    zs, zt, _ = rows()
    zs, zt = zs[[0, 3, 5]], zt[[0, 3, 5]]

    def zscore(z):
        return (z - z.mean(-1, keepdim=True)) / z.std(-1, keepdim=True)

    config = LossConfig(name="fkl", tau=2.0, tau_rule="logit_standardization", tau_min=1e-6, tau_max=1e6)
    leaf, reference_leaf = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
    values = kd_term(config, leaf, zt).values
    expected = fkl(zscore(reference_leaf), zscore(zt), 2.0)
    torch.testing.assert_close(values, expected, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(values.sum(), leaf)
    (expected_grad,) = torch.autograd.grad(expected.sum(), reference_leaf)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_sharpness_matching_equalizes_the_sharpness_and_averages_to_tau():
    zs, zt, _ = rows()
    tau_s, tau_t = rule_temperatures("sharpness_matching", zs, zt, 2.0, 1e-6, 1e6, 1.0)
    torch.testing.assert_close((tau_s + tau_t) / 2, torch.full_like(tau_s, 2.0))

    def sharpness(z, tau):
        finite = torch.isfinite(z)
        mean = torch.where(finite, z, 0).sum(-1) / finite.sum(-1)
        return (torch.where(finite, z, -math.inf).max(-1).values - mean) / tau

    torch.testing.assert_close(sharpness(zs, tau_s), sharpness(zt, tau_t))


@pytest.mark.parametrize("target", [0.3, 1.0, 2.5])
def test_entropy_target_reaches_the_target_entropy_where_it_can(target):
    zs, zt, _ = rows()
    tau = entropy_target_tau(zt, target, 1.0, 1e-3, 1e3)
    entropy, _ = entropy_at(torch.log_softmax(zt / tau[:, None], -1))
    torch.testing.assert_close(entropy, torch.full_like(entropy, target), rtol=0, atol=1e-5)
    tau_s, tau_t = rule_temperatures("entropy_target", zs, zt, 1.0, 1e-3, 1e3, target)
    assert torch.equal(tau_s, tau_t)


def test_entropy_target_ends_at_a_bound_where_the_target_is_out_of_reach():
    zs, zt = awkward_rows(torch.float64)
    tau = entropy_target_tau(zt, 1.0, 1.0, 0.05, 50.0)
    assert float(tau[0]) == pytest.approx(0.05, rel=1e-9)  # all-equal: H = log V > target at every τ
    assert float(tau[2]) == pytest.approx(50.0, rel=1e-9)  # one finite entry: H = 0 < target at every τ
    unreachable = entropy_target_tau(zt[6:], math.log(16) + 1.0, 1.0, 0.05, 50.0)  # above log V
    torch.testing.assert_close(unreachable, torch.full_like(unreachable, 50.0), rtol=1e-9, atol=0)


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("name", ["fkl", "rkl", "js", "drkl"])
def test_chunked_rows_equal_full_rows_under_a_rule(rule, name):
    """A rule is row-local: chunk by chunk it gives the full path's sums, gradients and per-token τ."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(13, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(20, 6, generator=g, dtype=torch.float64)
    teacher_hidden = torch.randn(13, 5, generator=g, dtype=torch.float64)
    teacher_weight = torch.randn(20, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 20, (13,), generator=g)
    config = LossConfig(name=name, tau=1.5, tau_rule=rule, tau_squared_scaling=True)
    leaf, leaf_weight = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    full = token_sums_from_logits(leaf @ leaf_weight.T, teacher_hidden @ teacher_weight.T, targets, config, 0.8)
    full_grads = torch.autograd.grad(full.loss, (leaf, leaf_weight))
    leaf2, weight2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    chunked = chunked_token_sums(leaf2, OutputHead(weight2), targets, config, 0.8, 4, teacher_hidden,
                                 OutputHead(teacher_weight))  # fmt: skip
    chunked_grads = torch.autograd.grad(chunked.loss, (leaf2, weight2))
    torch.testing.assert_close(chunked.loss, full.loss, rtol=1e-12, atol=1e-12)
    for got, expected in zip(chunked_grads, full_grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunked.teacher_tau, full.teacher_tau)
    logs = chunked.temperatures()
    assert logs["tau"] == 1.5 and set(logs) >= {"tau_mean", "tau_p10", "tau_p90"}
    assert float(logs["tau_p10"]) <= float(logs["tau_mean"]) <= float(logs["tau_p90"]) or rule == "entropy_target"


@pytest.mark.parametrize("rule, own", [("logit_standardization", True), ("sharpness_matching", True),
                                       ("entropy_target", False)])  # fmt: skip
def test_the_students_tau_is_logged_only_under_a_rule_that_gives_it_its_own(rule, own):
    zs, zt, targets = rows(torch.float32)
    config = LossConfig(name="fkl", tau=2.0, tau_rule=rule)
    full = token_sums_from_logits(zs[[0, 3, 5]], zt[[0, 3, 5]], targets[[0, 3, 5]], config, 1.0)
    logged = set(full.temperatures())
    assert {"tau", "tau_mean", "tau_p10", "tau_p90"} <= logged
    assert ({"tau_student_mean", "tau_student_p10", "tau_student_p90"} <= logged) == own
    assert (full.tau is None) == (not own)


def test_without_a_rule_only_the_steps_tau_is_logged():
    zs, zt, targets = rows(torch.float32)
    sums = token_sums_from_logits(zs[[0, 3]], zt[[0, 3]], targets[[0, 3]], LossConfig(name="fkl", tau=2.0), 1.0)
    assert sums.temperatures() == {"tau": 2.0} and sums.teacher_tau is None
    no_kd = token_sums_from_logits(zs[[0, 3]], None, targets[[0, 3]], LossConfig(), 0.0)
    assert no_kd.temperatures() == {}


# -- schedules ----------------------------------------------------------------------------------------------


def test_schedules_go_from_tau_to_tau_end_over_the_horizon():
    assert [scheduled_tau("linear", 4.0, 1.0, r) for r in (0, 0.5, 1, 2)] == [4.0, 2.5, 1.0, 1.0]
    cosine = [scheduled_tau("cosine", 4.0, 1.0, r) for r in (0, 0.5, 1)]
    assert cosine == pytest.approx([4.0, 2.5, 1.0])
    assert [scheduled_tau("step", 4.0, 1.0, r) for r in (0, 0.99, 1)] == [4.0, 4.0, 1.0]
    assert scheduled_tau("constant", 4.0, None, 0.7) == 4.0
    steps = LossConfig(tau=4.0, tau_schedule="linear", tau_end=1.0, tau_horizon=10)
    assert [steps.tau_at(s) for s in (0, 5, 10, 20)] == [4.0, 2.5, 1.0, 1.0]
    assert steps.at_step(5).tau == 2.5 and steps.at_step(5).tau_schedule == "linear"
    epochs = LossConfig(tau=4.0, tau_schedule="linear", tau_end=1.0, tau_horizon=2, tau_horizon_unit="epochs")
    assert epochs.tau_at(6, steps_per_epoch=6) == 2.5  # 1 of 2 epochs of 6 steps
    with pytest.raises(ConfigError, match="epochs needs the number of optimizer steps per epoch"):
        epochs.tau_at(3)
    constant = LossConfig(tau=3.0)
    assert constant.at_step(100) is constant


BAD = [
    ({"tau_schedule": "exponential"}, "model.loss.tau_schedule: unknown 'exponential'; choose constant, linear"),
    ({"tau_rule": "ctkd"}, "model.loss.tau_rule: unknown 'ctkd'; choose none, logit_standardization"),
    ({"tau_schedule": "linear", "tau_horizon": 10}, "model.loss.tau_schedule linear needs tau_end and tau_horizon"),
    ({"tau_schedule": "cosine", "tau_end": 1.0, "tau_horizon": 0}, "model.loss.tau_horizon must be a whole number"),
    ({"tau_schedule": "step", "tau_end": 0.0, "tau_horizon": 5}, "model.loss.tau_end: temperature tau must be"),
    ({"tau_end": 2.0}, "tau_end / tau_horizon are set but tau_schedule is constant"),
    ({"tau_horizon_unit": "hours"}, "model.loss.tau_horizon_unit: unknown 'hours'"),
    ({"tau_rule": "entropy_target", "tau_min": 5.0, "tau_max": 2.0}, "tau_min (5.0) must be below tau_max (2.0)"),
    ({"tau_min": 0.0}, "model.loss.tau_min must be a finite number > 0, got 0.0"),
    ({"tau_target_entropy": -1.0}, "model.loss.tau_target_entropy must be a finite number > 0"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[next(iter(o)) + f"-{i}" for i, (o, _) in enumerate(BAD)])
def test_bad_temperature_settings_are_one_error_naming_the_key(options, message):
    with pytest.raises(ConfigError, match=None) as error:
        LossConfig(**options)
    assert message in str(error.value)


def test_a_rule_is_refused_for_an_objective_that_cannot_take_per_token_temperatures():
    import tests.losses.toy_objective  # noqa: F401  (registers "toy", whose function has no teacher_tau)

    LossConfig(name="toy")  # no rule: fine
    with pytest.raises(ConfigError, match="objective 'toy' cannot take"):
        LossConfig(name="toy", tau_rule="sharpness_matching")


CLI_ERRORS = [
    (["--model.loss.tau_rule", "bogus"], "model.loss.tau_rule: unknown 'bogus'"),
    (["--model.loss.tau_schedule", "linear", "--model.loss.tau_end", "1", "--model.loss.tau_horizon", "0"],
     "model.loss.tau_horizon must be a whole number >= 1, got 0"),
    (["--model.kd_ratio", "0", "--model.loss.tau_rule", "entropy_target"],
     "model.loss.tau_rule sets the KD temperature, but this run has no KD term"),
    (["--model.loss.tau_schedule", "step", "--model.loss.tau_end", "1", "--model.loss.tau_horizon", "3",
      "--model.teacher", "null", "--model.kd_ratio", "0", "--model.student.layers", "null",
      "--model.student.config", "{model_type: llama}"], "model.loss.tau_schedule sets the KD temperature"),
]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message", CLI_ERRORS, ids=["rule", "horizon", "rule without KD", "schedule, no teacher"]
)
def test_the_cli_names_the_key_before_any_model_loads(tmp_path, capsys, extra, message):
    from lit_kd.cli import main
    from tests.conftest import ROOT

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "tiny.yaml"),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *extra])  # fmt: skip
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("lit_kd: error: ") and message in line
    assert not (tmp_path / "logs").exists()


def train_free_student(rule: str, kd_ratio: float, steps: int = 100) -> tuple[float, float, float]:
    """A free ``[16, 300]`` logit table trained from near-flat logits on FKL at τ 2 (and the LM loss on tokens
    drawn from the teacher): (the student's sharpness x_s, its entropy at τ 1, the teacher's), averaged over rows."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 300, generator=g) * 3.0
    teacher[torch.arange(16), torch.randint(0, 300, (16,), generator=g)] += 6.0
    targets = torch.multinomial(torch.softmax(teacher, -1), 1, generator=g).squeeze(-1)
    student = (torch.randn(16, 300, generator=g) * 0.01).requires_grad_(True)
    optimizer = torch.optim.Adam([student], lr=0.1)
    config = LossConfig(name="fkl", tau=2.0, tau_rule=rule)
    for _ in range(steps):
        kd = kd_term(config, student, teacher, targets).values.mean()
        loss = kd_ratio * kd + (1 - kd_ratio) * torch.nn.functional.cross_entropy(student, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def entropy(z: torch.Tensor) -> float:
        log_p = torch.log_softmax(z.detach(), -1)
        return float(-(log_p.exp() * log_p).sum(-1).mean())

    logits = student.detach()
    return float((logits.amax(-1) - logits.mean(-1)).mean()), entropy(logits), entropy(teacher)


def test_sharpness_matching_alone_leaves_the_students_sharpness_unset():
    """The defect behind the τ study's collapsed students: sharpness matching's KD term is minimized by every
    positive multiple of the teacher's logits, so on it alone a flat student stays flat (near-uniform samples at
    τ 1) while a constant τ sharpens it to the teacher's entropy; the LM loss beside it sets the sharpness."""
    flat, flat_entropy, teacher_entropy = train_free_student("sharpness_matching", 1.0)  # teacher: 2.5 nats
    assert flat < 1.5 and flat_entropy > teacher_entropy + 2.5  # ln 300 = 5.7 nats: near uniform
    _, constant_entropy, _ = train_free_student("none", 1.0)
    assert abs(constant_entropy - teacher_entropy) < 0.5
    sharp, mixed_entropy, _ = train_free_student("sharpness_matching", 0.9)
    assert sharp > 5.0 and abs(mixed_entropy - teacher_entropy) < 0.75


def test_sharpness_matching_on_the_kd_term_alone_is_warned():
    from types import SimpleNamespace

    from lit_kd.training.preflight import warn_unanchored_student_scale

    def module(rule: str, kd_ratio: float) -> SimpleNamespace:
        return SimpleNamespace(loss_config=LossConfig(name="fkl", tau_rule=rule), kd_ratio=kd_ratio,
                               teacher_config=object())  # fmt: skip

    with pytest.warns(UserWarning, match="sharpness_matching with model.kd_ratio 1"):
        line = warn_unanchored_student_scale(module("sharpness_matching", 1.0))
    assert "set model.kd_ratio below 1" in line
    assert warn_unanchored_student_scale(module("sharpness_matching", 0.9)) is None
    assert warn_unanchored_student_scale(module("entropy_target", 1.0)) is None
