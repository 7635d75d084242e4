"""The fused per-chunk kernels against autograd of the registered objectives (float64: masked entries, per-row τ
under the rules that detach it, τ² scaling, the CE mixed in), the compiled path against the eager one, and the
workspace, chunk-size and fallback behaviour of the chunked path."""

from __future__ import annotations

import logging

import pytest
import torch

import lit_kd.losses.fused as fused
from lit_kd.losses import OBJECTIVES, LossConfig
from lit_kd.losses.chunked import auto_chunk_size, chunked_token_sums, token_sums_from_logits
from lit_kd.losses.fused import KERNELS, Workspace, as_step_inputs, chunk_step, has_kernel, kernel_arguments
from lit_kd.losses.registry import kd_term, term_temperatures
from lit_kd.models.head import OutputHead

CASES = [
    {},
    {"tau_squared_scaling": True},
    {"tau_rule": "sharpness_matching"},
    {"tau_rule": "entropy_target", "tau_target_entropy": 1.2, "tau_squared_scaling": True},
]
HPARAMS = {"js": {"js_beta": 0.3}, "sfkl": {"skew_alpha": 0.2}, "srkl": {"skew_alpha": 0.2}, "akl": {"akl_mu": 0.6}}


def logits(rows: int = 7, vocab: int = 13, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, vocab, generator=g, dtype=dtype) * 2
    teacher = torch.randn(rows, vocab, generator=g, dtype=dtype) * 3
    student[0, 3] = teacher[0, 3] = float("-inf")  # an entry masked in both models
    student[1, :5] = teacher[1, :5] = float("-inf")
    teacher[2] *= 30  # a near one-hot teacher
    targets = torch.randint(5, vocab, (rows,), generator=g)
    return student, teacher, targets


def run_kernel(config, student, teacher, targets, kd_ratio=1.0, step=chunk_step):
    """``chunk_step`` on copies of the logits: (ℓ, CE, s·d, flags, ∂ℓ/∂z_s)."""
    rows, vocab = student.shape
    workspace = Workspace(rows, vocab, student.dtype, student.device)
    s, t = workspace("s", rows).copy_(student), workspace("t", rows).copy_(teacher)
    tau_s, tau_t = term_temperatures(config, s, t)
    arguments = kernel_arguments(config, s, t, targets, tau_s, tau_t)
    inputs = as_step_inputs(tau_s, tau_t, config.tau_squared_scaling, s, step is not chunk_step)
    c = workspace("c", rows) if kd_ratio < 1 else None
    out = step(s, t, workspace("g", rows), workspace("x", rows), c, targets, *inputs, arguments, config.name, kd_ratio)
    return (*out, workspace("g", rows).clone())


@pytest.mark.parametrize("options", CASES, ids=["plain", "tau2", "sharpness", "entropy+tau2"])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_kernel_equals_autograd(name, options):
    student, teacher, targets = logits()
    config = LossConfig(name=name, tau=1.7, **options, **HPARAMS.get(name, {}))
    assert has_kernel(config)
    combined, ce, values, flags, gradient = run_kernel(config, student, teacher, targets)
    leaf = student.clone().requires_grad_(True)
    reference = kd_term(config, leaf, teacher, targets)
    (expected,) = torch.autograd.grad(reference.values.sum(), leaf)
    torch.testing.assert_close(values, reference.values.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(combined, values)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(student, targets, reduction="none"))
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)
    assert not gradient.isnan().any() and (gradient[0, 3] == 0) and (gradient[1, :5] == 0).all()
    assert not flags.any()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_kernel_without_possible_zeros_skips_the_masks_and_equals_autograd(name):
    """Finite logits of a small spread: no probability can vanish, the kernels skip their 0·log 0 masks."""
    g = torch.Generator().manual_seed(3)
    student, teacher = (torch.randn(6, 11, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    targets = torch.randint(0, 11, (6,), generator=g)
    config = LossConfig(name=name, tau=1.3, **HPARAMS.get(name, {}))
    assert not fused.may_vanish(student, student.amax(-1, keepdim=True), 1.3)
    _, _, values, flags, gradient = run_kernel(config, student, teacher, targets)
    leaf = student.clone().requires_grad_(True)
    reference = kd_term(config, leaf, teacher, targets)
    (expected,) = torch.autograd.grad(reference.values.sum(), leaf)
    torch.testing.assert_close(values, reference.values.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)
    assert not flags.any()


def test_may_vanish_bounds_the_smallest_probability():
    """log softmax(z/τ) ≥ −spread/τ − log V: True once that may fall below float32's smallest normal number
    (≈ e^−87.3), for a −inf, +inf or NaN logit, and per row with a column of τ."""
    z = torch.zeros(2, 100)
    top = lambda z: z.amax(-1, keepdim=True)  # noqa: E731
    assert not fused.may_vanish(z, top(z), 1.0)
    z[1, 0] = 80.0  # spread 80 + log 100 ≈ 84.6 < 87.3 − 1
    assert not fused.may_vanish(z, top(z), 1.0)
    z[1, 0] = 90.0
    assert fused.may_vanish(z, top(z), 1.0)
    assert not fused.may_vanish(z, top(z), 2.0)
    assert fused.may_vanish(z, top(z), torch.tensor([[2.0], [1.0]]))
    for bad in (float("-inf"), float("inf"), float("nan")):
        z = torch.zeros(2, 100)
        z[0, 5] = bad
        assert fused.may_vanish(z, top(z), 1.0)


@pytest.mark.parametrize("name", ["fkl", "rkl", "sym_kl", "js", "sfkl", "srkl", "drkl"])
def test_underflown_probabilities_without_masked_logits_stay_finite(name):
    """float32 logits with a spread of 300 in both models: p and q underflow to 0 on the same entries without any
    −inf logit (the mixtures' log M is −inf there), so the masks run (0·log 0 := 0) and the kernel equals the full
    path's objective, finite."""
    g = torch.Generator().manual_seed(4)
    student = torch.randn(5, 64, generator=g) * 2
    teacher = torch.randn(5, 64, generator=g) * 2
    teacher[:, :8] += 300.0
    student[:, :8] += 300.0
    targets = torch.randint(0, 8, (5,), generator=g)
    config = LossConfig(name=name, tau=1.0, **HPARAMS.get(name, {}))
    _, _, values, flags, gradient = run_kernel(config, student, teacher, targets)
    leaf = student.clone().requires_grad_(True)
    reference = kd_term(config, leaf, teacher, targets)
    (expected,) = torch.autograd.grad(reference.values.sum(), leaf)
    assert values.isfinite().all() and gradient.isfinite().all() and not flags.any()
    torch.testing.assert_close(values, reference.values.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fkl", "js", "ab", "drkl"])
def test_kernel_mixes_in_the_ce_gradient_below_kd_ratio_1(name):
    student, teacher, targets = logits(seed=1)
    config = LossConfig(name=name, tau=2.0)
    combined, ce, values, _, gradient = run_kernel(config, student, teacher, targets, kd_ratio=0.3)
    leaf = student.clone().requires_grad_(True)
    ce_ref = torch.nn.functional.cross_entropy(leaf, targets, reduction="none")
    reference = 0.7 * ce_ref + 0.3 * kd_term(config, leaf, teacher, targets).values
    (expected,) = torch.autograd.grad(reference.sum(), leaf)
    torch.testing.assert_close(combined, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)


def test_drkl_where_the_student_puts_all_its_mass_on_the_target():
    """q_t rounds to 1: DRKL clamps log q_t to −eps there, whose gradient is 0 — the kernel does as autograd."""
    student, teacher, targets = logits(seed=2)
    student[4, targets[4]] = 60.0
    config = LossConfig(name="drkl", tau=1.0)
    *_, gradient = run_kernel(config, student, teacher, targets)
    leaf = student.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(kd_term(config, leaf, teacher, targets).values.sum(), leaf)
    torch.testing.assert_close(gradient, expected, rtol=1e-10, atol=1e-12)


def test_objectives_outside_the_kernels_are_named():
    assert set(KERNELS) == set(OBJECTIVES)
    assert not has_kernel(LossConfig(name="fkl", tau_rule="logit_standardization"))  # its student τ has a gradient
    for alpha, beta in [(0.0, 0.7), (0.2, 0.0), (0.5, -0.5)]:  # AB's limit cases take autograd
        assert not has_kernel(LossConfig(name="ab", ab_alpha=alpha, ab_beta=beta))


def test_nonfinite_values_are_flagged_per_model():
    student, teacher, targets = logits(dtype=torch.float32)
    student[2, 7] = float("inf")
    teacher[5, 6] = float("nan")
    *_, flags, _ = run_kernel(LossConfig("fkl"), student, teacher, targets)
    assert flags.tolist() == [False, True, True, False]


@pytest.mark.parametrize(
    "name",
    [n if n in ("js", "drkl") else pytest.param(n, marks=pytest.mark.slow)
     for n in sorted(OBJECTIVES) if n not in fused.EAGER_WHEN_COMPILED],
)  # fmt: skip
def test_the_compiled_step_equals_the_eager_one(name, monkeypatch):
    """torch.compile (inductor, C++ on this CPU) of ``chunk_step``: the same values and gradients, and the same
    chunked sums over chunks of several sizes (the row count turns dynamic at its first change). JS and DRKL (the
    longest kernel) in the default run, the others with ``-m slow`` (about 8 s of compilation each)."""
    torch.compiler.reset()
    monkeypatch.setattr(fused, "_COMPILED", [])
    student, teacher, targets = logits(dtype=torch.float32)
    config = LossConfig(name=name, tau=2.0, **HPARAMS.get(name, {}))
    eager = run_kernel(config, student, teacher, targets, kd_ratio=0.5)
    compiled = run_kernel(config, student, teacher, targets, kd_ratio=0.5, step=fused.compiled_step(name))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    hidden, head, teacher_hidden, teacher_head, rows_targets = head_problem()
    sums = [chunked_token_sums(hidden, head, rows_targets, config, 0.5, 8, teacher_hidden, teacher_head,
                               compiled=compiled) for compiled in (False, True)]  # fmt: skip
    grads = [torch.autograd.grad(s.loss, [hidden, head.weight]) for s in sums]
    torch.testing.assert_close(sums[1].loss, sums[0].loss, rtol=1e-5, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert name not in fused._FAILED


def test_a_failing_compilation_runs_the_eager_kernel_with_one_line(monkeypatch, caplog):
    def broken(*args, **kwargs):
        args[0].fill_(float("nan"))  # a failure after touching the buffers: the chunk must be recomputed
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(fused, "_COMPILED", [broken])
    monkeypatch.setattr(fused, "_FAILED", set())
    hidden, head, teacher_hidden, teacher_head, targets = head_problem()
    config = LossConfig(name="fkl", tau=2.0)
    with caplog.at_level(logging.WARNING, logger="lit_kd.losses.fused"):
        runs = [chunked_token_sums(hidden, head, targets, config, 1.0, 8, teacher_hidden, teacher_head,
                                   compiled=compiled) for compiled in (True, True, False)]  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["lit_kd: torch.compile of the fkl loss kernel failed (RuntimeError: no C++ compiler); "
                     "running it eagerly"]  # fmt: skip
    for run in runs[:2]:
        torch.testing.assert_close(run.loss, runs[2].loss, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(fused.EAGER_WHEN_COMPILED))
def test_compile_loss_runs_the_objectives_whose_compiled_peak_is_too_high_eagerly(name, monkeypatch, caplog):
    """TVD, AKL, AB and RKL compiled held more than 0.10× the full path's peak: ``compile_loss`` runs them eagerly,
    with one line, and never calls the compiler for them."""

    def never(*args, **kwargs):
        raise AssertionError("the compiled step ran")

    monkeypatch.setattr(fused, "_COMPILED", [never])
    monkeypatch.setattr(fused, "_FAILED", set())
    hidden, head, teacher_hidden, teacher_head, targets = head_problem()
    config = LossConfig(name=name, tau=2.0)
    with caplog.at_level(logging.WARNING, logger="lit_kd.losses.fused"):
        runs = [chunked_token_sums(hidden, head, targets, config, 1.0, 8, teacher_hidden, teacher_head,
                                   compiled=compiled) for compiled in (True, True, False)]  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"lit_kd: model.compile_loss: the {name} loss kernel runs eagerly (compiled, its step holds "
                     "more than 0.10x the full-logits path's memory; eager, less)"]  # fmt: skip
    for run in runs[:2]:
        torch.testing.assert_close(run.loss, runs[2].loss, rtol=0, atol=0)


def head_problem(rows: int = 29, vocab: int = 40):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(rows, 12, generator=g, requires_grad=True)
    weight = torch.randn(vocab, 12, generator=g, requires_grad=True)
    teacher_hidden, teacher_weight = torch.randn(rows, 20, generator=g), 2 * torch.randn(vocab, 20, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    return hidden, OutputHead(weight), teacher_hidden, OutputHead(teacher_weight), targets


@pytest.mark.parametrize("name, kd_ratio, blocks", [("rkl", 1.0, 3), ("js", 1.0, 4), ("js", 0.5, 5), ("fkl", 0.0, 2)])
def test_the_chunked_path_reuses_a_few_buffers(monkeypatch, name, kd_ratio, blocks):
    made = []
    original = torch.empty

    def counting_empty(*shape, **kwargs):
        made.append(tuple(shape))
        return original(*shape, **kwargs)

    hidden, head, teacher_hidden, teacher_head, targets = head_problem()
    monkeypatch.setattr(fused.torch, "empty", counting_empty)
    sums = chunked_token_sums(hidden, head, targets, LossConfig(name), kd_ratio, 6, teacher_hidden, teacher_head)
    assert made == [(6, 40)] * blocks  # five chunks, one workspace
    sums.loss.backward()


def test_auto_chunk_size_follows_the_vocabulary_and_the_hidden_size():
    assert auto_chunk_size(50257, 768) == 512  # GPT-2
    assert auto_chunk_size(50272, 2048) == 1024  # OPT-1.3B
    assert auto_chunk_size(151936, 768) == 256
    assert auto_chunk_size(100, 16) == 64  # never fewer than 64 rows
    hidden, head, teacher_hidden, teacher_head, targets = head_problem()
    config = LossConfig("fkl", tau=2.0)
    auto = chunked_token_sums(hidden, head, targets, config, 1.0, "auto", teacher_hidden, teacher_head)
    full = token_sums_from_logits(head.logits(hidden), teacher_head.logits(teacher_hidden), targets, config, 1.0)
    torch.testing.assert_close(auto.loss, full.loss)
    with pytest.raises(ValueError, match="chunk_size must be a positive number of rows or 'auto', got 'big'"):
        chunked_token_sums(hidden, head, targets, config, 1.0, "big", teacher_hidden, teacher_head)


def test_a_second_backward_through_the_chunked_loss_is_refused():
    """The precomputed gradients are scaled in place by the backward: a second one would see them scaled twice."""
    hidden, head, teacher_hidden, teacher_head, targets = head_problem()
    sums = chunked_token_sums(hidden, head, targets, LossConfig("fkl"), 1.0, 8, teacher_hidden, teacher_head)
    sums.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        sums.loss.backward()


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_chunked_loss_on_cuda_equals_the_full_path(compiled):
    """On CUDA, the fused kernels (eager, and compiled by inductor's Triton backend) against the full-logits path."""
    hidden, head, teacher_hidden, teacher_head, targets = head_problem(rows=300, vocab=5000)
    hidden = hidden.detach().cuda().requires_grad_(True)
    weight = head.weight.detach().cuda().requires_grad_(True)
    head, teacher_head = OutputHead(weight), OutputHead(teacher_head.weight.cuda())
    teacher_hidden, targets = teacher_hidden.cuda(), targets.cuda()
    for name in sorted(OBJECTIVES):
        config = LossConfig(name, tau=2.0)
        full = token_sums_from_logits(head.logits(hidden), teacher_head.logits(teacher_hidden), targets, config, 0.5)
        expected = torch.autograd.grad(full.loss, [hidden, weight])
        sums = chunked_token_sums(hidden, head, targets, config, 0.5, 64, teacher_hidden, teacher_head,
                                  compiled=compiled)  # fmt: skip
        got = torch.autograd.grad(sums.loss, [hidden, weight])
        torch.testing.assert_close(sums.loss, full.loss, rtol=1e-5, atol=0)
        for a, b in zip(got, expected):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max(), name
        assert name not in fused._FAILED
