"""The cross-vocabulary KD term against answers known by construction: a relabeled vocabulary gives the
same-vocabulary objective, a hand-built 1:N pair gives its buckets computed here by hand, in float64, values and
gradients, for every objective."""

from __future__ import annotations

import pytest
import torch

from lit_kd.losses.cross_vocab import GroupRows, cross_vocab_term, sorted_l1
from lit_kd.losses.registry import OBJECTIVES, LossConfig, per_token_divergence
from lit_kd.models.vocab_map import VocabularyMap

NAMES = sorted(OBJECTIVES)


def vocab_map(pairs: list[tuple[int, int]], teacher_size: int, student_size: int) -> VocabularyMap:
    teacher, student = zip(*pairs)
    return VocabularyMap(torch.tensor(teacher), torch.tensor(student), teacher_size, student_size)


@pytest.mark.parametrize("name", NAMES)
def test_a_relabeled_vocabulary_gives_the_same_vocabulary_objective(name):
    """The student's vocabulary is the teacher's in another order and every group is 1:1: the buckets are the full
    distributions reordered (the rest is empty), so the value is the plain objective's, values and gradients."""
    torch.manual_seed(0)
    rows, size = 6, 11
    config = LossConfig(name=name, tau=1.7)
    teacher = torch.randn(rows, size, dtype=torch.float64) * 3
    student = torch.randn(rows, size, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, size, (rows,))
    order = torch.randperm(size)  # student entry order[k] is teacher entry k
    relabeled = student.detach()[:, torch.argsort(order)].clone().requires_grad_(True)
    # relabeled[:, order[k]] = student[:, k]
    assert torch.equal(relabeled.detach()[:, order], student.detach())
    groups = GroupRows.from_groups([((r, r + 1), (r, r + 1)) for r in range(rows)])
    vocabulary = vocab_map([(k, int(order[k])) for k in range(size)], size, size)
    term = cross_vocab_term(config, relabeled, teacher, order[targets], targets, groups, vocabulary, uld_weight=0.0)
    plain = per_token_divergence(config, student, teacher, targets)
    torch.testing.assert_close(term.values, plain, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(term.matched_mass, torch.ones(rows, dtype=torch.float64))
    (grad_cross,) = torch.autograd.grad(term.values.sum(), relabeled)
    (grad_plain,) = torch.autograd.grad(plain.sum(), student)
    torch.testing.assert_close(grad_cross[:, order], grad_plain, rtol=1e-9, atol=1e-12)


def hand_buckets(tau: float, z_t: torch.Tensor, z_s1: torch.Tensor, z_s2: torch.Tensor):
    """Teacher vocabulary {a, b, ab, c}, student {a, b, c}; the text "ab" is one teacher token (ab) and two student
    tokens (a, b); matched pairs a↔a, b↔b, c↔c. The student's first token a is matched, so its pair leaves the
    matched buckets: kept pairs b, c; group P(ab) = p(ab), Q(ab) = q1(a)·q2(b); rest p(a) and
    q1(a)·(1 − q2(b))."""
    p = torch.softmax(z_t / tau, -1)
    q1, q2 = torch.softmax(z_s1 / tau, -1), torch.softmax(z_s2 / tau, -1)
    a, b, ab, c = 0, 1, 2, 3
    teacher = torch.stack([p[b], p[c], p[ab], p[a]])
    student = torch.stack([q1[1], q1[2], q1[0] * q2[1], q1[0] * (1 - q2[1])])
    return teacher, student


@pytest.mark.parametrize("name", NAMES)
def test_a_one_to_many_group_against_its_buckets_by_hand(name):
    torch.manual_seed(1)
    tau = 2.3
    config = LossConfig(name=name, tau=tau)
    z_t = torch.randn(1, 4, dtype=torch.float64) * 2
    z_s = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    groups = GroupRows.from_groups([((0, 1), (0, 2))])
    vocabulary = vocab_map([(0, 0), (1, 1), (3, 2)], 4, 3)
    term = cross_vocab_term(
        config, z_s, z_t, torch.tensor([0, 1]), torch.tensor([2]), groups, vocabulary, uld_weight=0.0
    )
    teacher, student = hand_buckets(tau, z_t[0], z_s[0], z_s[1])
    # the kept pairs' buckets are in pair order (a's pair is removed: −inf on both sides)
    inf = torch.tensor([float("-inf")], dtype=torch.float64)
    log_p = torch.cat([inf, teacher.log()])
    log_q = torch.cat([inf, student.log()])
    expected = per_token_divergence(config, log_q[None], log_p[None], torch.tensor([3]), tau=1.0)
    torch.testing.assert_close(term.values, expected, rtol=1e-10, atol=1e-12)
    assert term.matched_mass.item() == pytest.approx(1 - teacher[-1].item())
    (grad,) = torch.autograd.grad(term.values.sum(), z_s)
    (expected_grad,) = torch.autograd.grad(expected.sum(), z_s)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    if name != "tvd":  # TVD's |P − Q| terms of the group and the rest can cancel in q2's direction (they do here)
        assert grad[1].abs().sum() > 0  # the chain rule reaches the group's second student row


def test_gradcheck_with_several_groups_per_row_temperatures_and_uld():
    torch.manual_seed(2)
    config = LossConfig(name="js", tau=1.5)
    z_t = torch.randn(4, 7, dtype=torch.float64)
    z_s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    groups = GroupRows.from_groups([((0, 1), (0, 2)), ((1, 3), (2, 3)), ((3, 4), (3, 5))])
    vocabulary = vocab_map([(0, 0), (1, 2), (2, 1), (5, 4)], 7, 6)
    t_targets, s_targets = torch.tensor([6, 2, 4, 1]), torch.tensor([0, 3, 1, 2, 5])
    tau_s = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.2], dtype=torch.float64)
    tau_t = torch.tensor([0.7, 1.1, 2.5, 0.9], dtype=torch.float64)

    def term(z):
        return cross_vocab_term(config, z, z_t, s_targets, t_targets, groups, vocabulary, 0.4, tau_s, tau_t, 2).values

    assert torch.autograd.gradcheck(term, (z_s,))
    assert torch.isfinite(term(z_s)).all() and (term(z_s) >= 0).all()


def test_masked_entries_give_no_nan():
    config = LossConfig(name="rkl", tau=2.0)
    z_t = torch.tensor([[1.0, float("-inf"), 0.5, 2.0]])
    z_s = torch.tensor([[0.3, float("-inf"), 1.0], [2.0, 0.1, float("-inf")]], requires_grad=True)
    groups = GroupRows.from_groups([((0, 1), (0, 2))])
    vocabulary = vocab_map([(0, 0), (1, 1), (3, 2)], 4, 3)
    term = cross_vocab_term(config, z_s, z_t, torch.tensor([0, 1]), torch.tensor([2]), groups, vocabulary)
    (grad,) = torch.autograd.grad(term.values.sum(), z_s)
    assert torch.isfinite(term.values).all() and not grad.isnan().any()


def test_sorted_l1_by_hand():
    a = torch.tensor([[0.1, 0.5, 0.0]])
    b = torch.tensor([[0.2, 0.3]])
    # sorted: (0.5, 0.1, 0) vs (0.3, 0.2, 0): |0.2| + |−0.1| + 0
    torch.testing.assert_close(sorted_l1(a, b), torch.tensor([0.3]))


def test_log1mexp_is_finite_with_finite_gradients_at_both_ends():
    from lit_kd.losses.core import log1mexp

    x = torch.tensor([-1e-8, -1e-3, -0.5, -0.7, -5.0, -80.0], requires_grad=True)
    value = log1mexp(x)
    torch.testing.assert_close(value, torch.log(-torch.expm1(x.detach().double())).float(), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all()  # the unused branch's NaN (log1p(−1) near 0) does not leak into the gradient
