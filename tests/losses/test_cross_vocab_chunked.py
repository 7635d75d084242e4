"""The chunked cross-vocabulary step against the full-logits one (``cross_vocab_token_sums`` on the heads' logits),
in float64: values and the gradients of the hidden rows and the head, for every objective, chunk boundaries that
cut where groups would straddle them, groups of several rows on either side, rows in no group, 0 < kd_ratio < 1 and
kd_ratio = 1, a frozen head, ULD on and off, −inf-masked entries; and ``chunk_plan`` and ULD's selection."""

from __future__ import annotations

import pytest
import torch

from lit_kd.data.alignment import GroupRows
from lit_kd.losses.cross_vocab import cross_vocab_token_sums, sorted_l1
from lit_kd.losses.cross_vocab_chunked import (
    chunk_plan,
    chunked_cross_vocab_token_sums,
    largest_numpy,
    largest_torch,
    sorted_l1_and_grad,
)
from lit_kd.losses.registry import OBJECTIVES, LossConfig
from lit_kd.models.head import OutputHead
from lit_kd.models.vocab_map import VocabularyMap

NAMES = sorted(OBJECTIVES)
GROUPS = [  # (teacher rows, student rows): 1:1, 1:N, N:1, N:M, a gap of two student rows and one teacher row
    ((0, 1), (0, 1)),
    ((1, 2), (1, 4)),
    ((2, 5), (4, 5)),
    ((5, 7), (5, 8)),
    ((7, 8), (8, 9)),
    ((9, 10), (11, 12)),
    ((10, 11), (12, 15)),
    ((11, 12), (15, 16)),
]
ROWS_T, ROWS_S, V_T, V_S, WIDTH = 13, 17, 23, 19, 6


def problem(seed: int = 0, masked: bool = False, pairs: list | None = None):
    torch.manual_seed(seed)
    teacher_hidden = torch.randn(ROWS_T, WIDTH, dtype=torch.float64)
    teacher_head = OutputHead(torch.randn(V_T, WIDTH, dtype=torch.float64))
    hidden = torch.randn(ROWS_S, WIDTH, dtype=torch.float64)
    weight = torch.randn(V_S, WIDTH, dtype=torch.float64)
    bias = torch.randn(V_S, dtype=torch.float64)
    if masked:  # a pair and an unpaired entry −inf in every row of each side (a padded vocabulary's masking)
        bias[[3, 7]] = float("-inf")
        teacher_head = OutputHead(teacher_head.weight, torch.zeros(V_T, dtype=torch.float64).index_fill(0,
                                  torch.tensor([4, 6]), float("-inf")))  # fmt: skip
    if pairs is None:
        pairs = [(0, 0), (1, 2), (2, 1), (4, 3), (5, 6), (7, 5), (8, 9), (10, 10), (12, 11), (15, 13), (20, 18)]
    vocabulary = VocabularyMap(torch.tensor([t for t, _ in pairs]), torch.tensor([s for _, s in pairs]), V_T, V_S)
    targets_t = torch.randint(0, V_T, (ROWS_T,))
    targets_s = torch.randint(0, V_S, (ROWS_S,))
    targets_t[0], targets_s[0] = 4, 3  # a matched pair on both sides: one pair removed
    targets_t[2], targets_s[4] = 7, 2  # two different pairs removed
    targets_t[5], targets_s[5] = 3, 4  # unpaired entries on both sides
    if masked:
        targets_s[(targets_s == 3) | (targets_s == 7)] = 4
        targets_t[(targets_t == 4) | (targets_t == 6)] = 3
    return teacher_hidden, teacher_head, hidden, weight, bias, targets_t, targets_s, vocabulary


def both_paths(name: str, kd_ratio: float, uld_weight: float, chunk_size: int, frozen: bool = False,
               masked: bool = False, tau: float = 1.7, squared: bool = False, seed: int = 0,
               groups: list | None = None, pairs: list | None = None):  # fmt: skip
    """(full, chunked): each (loss, lm_loss, kd_loss, hidden gradient, weight and bias gradients or None, the
    non-finite flags); ``groups`` default ``GROUPS``."""
    teacher_hidden, teacher_head, hidden, weight, bias, targets_t, targets_s, vocabulary = problem(seed, masked, pairs)
    config = LossConfig(name=name, tau=tau, tau_squared_scaling=squared)
    groups = GroupRows.from_groups(GROUPS if groups is None else groups)
    out = []
    for chunked in (False, True):
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(not frozen)
        b = bias.clone().requires_grad_(not frozen)
        head = OutputHead(w, b)
        if chunked:
            sums = chunked_cross_vocab_token_sums(config, h, head, teacher_hidden, teacher_head, targets_s, targets_t,
                                                  groups, vocabulary, kd_ratio, uld_weight, chunk_size)  # fmt: skip
        else:
            teacher_logits = teacher_head.logits(teacher_hidden)
            sums = cross_vocab_token_sums(config, head.logits(h), teacher_logits, targets_s, targets_t, groups,
                                          vocabulary, kd_ratio, uld_weight, chunk_size)  # fmt: skip
        sums.loss.backward()
        out.append((sums.loss.detach(), sums.lm_loss, sums.kd_loss, h.grad, None if frozen else w.grad,
                    None if frozen else b.grad, sums.nonfinite))  # fmt: skip
    return out


def assert_same(full, chunked):
    for a, b in zip(full, chunked):
        if a is None or b is None:
            assert a is None and b is None
            continue
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
            continue
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", NAMES)
def test_every_objective_equals_the_full_logits_path(name):
    full, chunked = both_paths(name, kd_ratio=0.6, uld_weight=0.7, chunk_size=4)
    assert_same(full, chunked)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8, 64])
@pytest.mark.parametrize("kd_ratio", [1.0, 0.3])
def test_chunk_boundaries_and_kd_ratios(chunk_size, kd_ratio):
    """Chunks of 1 to 64 rows: the plan cuts only at group starts, so every group's chain is in one chunk."""
    full, chunked = both_paths("js", kd_ratio, uld_weight=1.0, chunk_size=chunk_size)
    assert_same(full, chunked)


@pytest.mark.parametrize("name", ["fkl", "rkl", "drkl", "akl"])
def test_uld_off_squared_scaling_and_another_temperature(name):
    full, chunked = both_paths(name, kd_ratio=1.0, uld_weight=0.0, chunk_size=5, tau=0.8, squared=True, seed=3)
    assert_same(full, chunked)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_rows_theirs():
    full, chunked = both_paths("sym_kl", kd_ratio=0.5, uld_weight=1.0, chunk_size=6, frozen=True)
    assert_same(full, chunked)


@pytest.mark.parametrize("name", ["fkl", "rkl", "js", "srkl", "tvd"])
def test_masked_entries_give_no_nan(name):
    full, chunked = both_paths(name, kd_ratio=0.8, uld_weight=1.0, chunk_size=4, masked=True, seed=1)
    assert_same(full, chunked)


def test_the_ab_limit_without_a_kernel_takes_autograd_on_the_buckets():
    teacher_hidden, teacher_head, hidden, weight, bias, targets_t, targets_s, vocabulary = problem(2)
    groups = GroupRows.from_groups(GROUPS)
    results = []
    for chunked in (False, True):
        config = LossConfig(name="ab", tau=1.3, ab_alpha=0.0, ab_beta=0.6)
        h = hidden.clone().requires_grad_(True)
        head = OutputHead(weight.clone().requires_grad_(True), bias)
        if chunked:
            sums = chunked_cross_vocab_token_sums(config, h, head, teacher_hidden, teacher_head, targets_s, targets_t,
                                                  groups, vocabulary, 1.0, 0.5, 3)  # fmt: skip
        else:
            sums = cross_vocab_token_sums(config, head.logits(h), teacher_head.logits(teacher_hidden), targets_s,
                                          targets_t, groups, vocabulary, 1.0, 0.5)  # fmt: skip
        sums.loss.backward()
        results.append((sums.loss.detach(), h.grad, head.weight.grad))
    assert_same(*results)


def test_without_a_teacher_it_is_the_cross_entropy():
    _, _, hidden, weight, bias, _, targets_s, _ = problem()
    h = hidden.clone().requires_grad_(True)
    sums = chunked_cross_vocab_token_sums(LossConfig(name="fkl"), h, OutputHead(weight, bias), None, None, targets_s,
                                          None, None, None, 1.0, chunk_size=4)  # fmt: skip
    sums.loss.backward()
    x = hidden.clone().requires_grad_(True)
    expected = torch.nn.functional.cross_entropy(OutputHead(weight, bias).logits(x), targets_s, reduction="sum")
    expected.backward()
    torch.testing.assert_close(sums.loss.detach(), expected.detach())
    torch.testing.assert_close(h.grad, x.grad)
    assert sums.kd_loss is None


def test_diagnostics_and_no_grad():
    teacher_hidden, teacher_head, hidden, weight, bias, targets_t, targets_s, vocabulary = problem()
    groups, config = GroupRows.from_groups(GROUPS), LossConfig(name="rkl", tau=2.0)
    with torch.no_grad():
        sums = chunked_cross_vocab_token_sums(config, hidden, OutputHead(weight, bias), teacher_hidden, teacher_head,
                                              targets_s, targets_t, groups, vocabulary, 0.5, 1.0, 4, True)  # fmt: skip
        full = cross_vocab_token_sums(config, OutputHead(weight, bias).logits(hidden),
                                      teacher_head.logits(teacher_hidden), targets_s, targets_t, groups, vocabulary,
                                      0.5, 1.0, diagnostics=True)  # fmt: skip
    torch.testing.assert_close(sums.loss, full.loss)
    torch.testing.assert_close(sums.diagnostics["matched_mass"], full.diagnostics["matched_mass"])


def test_chunk_plan_cuts_at_group_starts_and_covers_every_row():
    groups = GroupRows.from_groups(GROUPS)
    for size in (1, 2, 3, 4, 7, 100):
        plan = chunk_plan(groups, ROWS_S, ROWS_T, size)
        assert plan[0].student.start == plan[0].teacher.start == plan[0].groups.start == 0
        assert (plan[-1].student.stop, plan[-1].teacher.stop, plan[-1].groups.stop) == (ROWS_S, ROWS_T, len(GROUPS))
        for before, after in zip(plan, plan[1:]):
            assert before.student.stop == after.student.start and before.teacher.stop == after.teacher.start
            assert before.groups.stop == after.groups.start
        for chunk in plan:
            rows = (chunk.student.stop - chunk.student.start, chunk.teacher.stop - chunk.teacher.start)
            in_chunk = GROUPS[chunk.groups]
            assert max(rows) <= size or len(in_chunk) == 1  # only a group longer than the chunk exceeds it
            for (t0, t1), (s0, s1) in in_chunk:
                assert chunk.student.start <= s0 < s1 <= chunk.student.stop
                assert chunk.teacher.start <= t0 < t1 <= chunk.teacher.stop
    gap_rows = chunk_plan(GroupRows.from_groups([((0, 1), (9, 10))]), 12, 1, 4)  # 9 rows in no group before it
    assert [(c.student.start, c.student.stop, c.groups.stop - c.groups.start) for c in gap_rows] == [
        (0, 4, 0),
        (4, 8, 0),
        (8, 12, 1),
    ]
    with pytest.raises(ValueError, match="in order"):
        chunk_plan(GroupRows.from_groups([((0, 2), (0, 2)), ((1, 3), (2, 3))]), 3, 3, 4)


@pytest.mark.parametrize("widths", [(9, 4), (4, 9), (6, 6)])
def test_sorted_l1_by_selection_equals_the_full_sort(widths):
    torch.manual_seed(4)
    a = torch.rand(5, widths[0], dtype=torch.float64)
    b = torch.rand(5, widths[1], dtype=torch.float64, requires_grad=True)
    a[0, :2] = 0.0  # zeros, as masked entries give
    value, grad = sorted_l1_and_grad(a, b.detach())
    expected = sorted_l1(a, b)
    (expected_grad,) = torch.autograd.grad(expected.sum(), b)
    torch.testing.assert_close(value, expected.detach())
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("k", [3, 7])
@pytest.mark.parametrize("with_index", [False, True])
def test_the_numpy_and_torch_selections_agree(k, with_index):
    """The CPU selection (numpy) and the one used on accelerators (``torch.topk``), on CPU."""
    torch.manual_seed(5)
    x = torch.rand(4, 7, dtype=torch.float64)
    values, index, others = largest_numpy(x.clone(), k, with_index)
    expected_values, expected_index, expected_others = largest_torch(x.clone(), k, with_index)
    torch.testing.assert_close(values, expected_values)
    torch.testing.assert_close(others, expected_others)
    torch.testing.assert_close(values, x.sort(-1).values[:, 7 - k :])
    if with_index:
        assert torch.equal(index, expected_index)
        torch.testing.assert_close(x.gather(-1, index), values)


def test_the_step_with_the_torch_selection(monkeypatch):
    """The whole step with ULD's selection by ``torch.topk``, as on an accelerator."""
    import lit_kd.losses.cross_vocab_chunked as chunked_module

    monkeypatch.setattr(chunked_module, "largest_numpy", largest_torch)
    full, chunked = both_paths("rkl", kd_ratio=0.5, uld_weight=1.0, chunk_size=5, seed=6)
    assert_same(full, chunked)


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_rows_in_no_group_on_one_side_only_and_no_groups_at_all(chunk_size):
    """A teacher gap of five rows where the student has none (a chunk may hold teacher rows only), a student gap at
    the end; and a batch without groups (the KD term is 0: the step is (1 − r)·CE)."""
    groups = [((0, 1), (0, 2)), ((6, 7), (2, 3)), ((7, 9), (3, 4)), ((9, 13), (4, 6))]
    assert_same(*both_paths("fkl", kd_ratio=0.5, uld_weight=1.0, chunk_size=chunk_size, groups=groups))
    assert_same(*both_paths("rkl", kd_ratio=0.5, uld_weight=1.0, chunk_size=chunk_size, groups=[]))


def test_a_single_matched_pair():
    """One pair: nearly every entry is in the rest (wider than the vocabulary with its two extra columns)."""
    assert_same(*both_paths("js", kd_ratio=0.7, uld_weight=1.0, chunk_size=3, pairs=[(4, 3)]))
