"""Fused per-chunk kernels: a chunk's loss terms and ∂ℓ/∂z_s in one pass over its logits, in place, no autograd.

Every objective is a function f(log q) of the student's q = softmax(z_s/τ_s) (p = softmax(z_t/τ_t) fixed), so its
gradient is the softmax pull-back (``../shared/reference/objectives.md`` §1)

    ∂d/∂z_s,j = (1/τ_s)·(u_j − q_j·Σ_k u_k),    u_k = ∂f/∂log q_k (up to a multiple of q, which this removes),

and each kernel gives u (zero where q_k = 0, so −inf-masked entries stay out):

    fkl     u = −p                                   rkl     u = q·log(q/p)
    sym_kl  u = −w·p + (1 − w)·q·log(q/p)            js      u = (1 − β)·q·log(q/M),  M = βp + (1 − β)q
    tvd     u = ½·q·sign(q − p)                      sfkl    u = −(1 − α)·q·p/m,      m = αp + (1 − α)q
    srkl    u = q·(log(q/m') − α·q/m'),  m' = (1 − α)p + αq
    akl     sym_kl with w = w_head (the detached head/tail weights, found by selection: ``akl_head_weight``)
    ab      u = c/α,  c = q^(α+β) − p^α·q^β (α, β, α + β ≠ 0)
    drkl    u_k = γ·q̂_k·(log(q̂_k/p̂_k) + 1) for k ≠ t;  u_t from the binary term and log(1 − q_t) (``_drkl_``)

(objectives.md §2.1–2.10; mixtures are not detached, as in the objectives themselves). The values are the
objectives' own formulas. A kernel works on four ``[n, V]`` buffers of a ``Workspace`` — ``s`` and ``t`` hold the
student's and the teacher's logits on entry and are overwritten, ``g`` holds ∂(s·d)/∂z_s on exit, ``x`` is scratch
— so the chunk costs at most four blocks however many terms its objective has, and the buffers are reused from
chunk to chunk (no fresh allocation, no page faults). ``chunk_step`` adds the CE (its value always; its gradient only
when ``kd_ratio < 1``, in a fifth buffer) and the non-finite flags. ``compiled_step`` is ``chunk_step`` through
``torch.compile``, run on copies of the logits so that inductor fuses the passes without materializing the
intermediate blocks; it is used where asked and falls back to this eager code with one line when it fails.
The logit-standardization rule (whose student τ carries a gradient) and AB's limit cases have no kernel here: the
chunked path differentiates them with autograd.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from lit_kd.losses.akl import akl_head_weight
from lit_kd.losses.core import Temperature, kl_from_log_probs, log1mexp
from lit_kd.losses.registry import LossConfig, squared_factor

log = logging.getLogger(__name__)

AKL_WEIGHT_ROWS = 128
"""AKL's head/tail weights are found this many rows at a time, so their int64 bin indices and the gaps |p − q|
stay a fraction of one ``[chunk, V]`` block."""


@dataclass
class Workspace:
    """The ``[rows, V]`` buffers a chunked loss reuses from chunk to chunk (made on first use, in ``dtype``)."""

    rows: int
    vocab: int
    dtype: torch.dtype
    device: torch.device

    def __post_init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def __call__(self, name: str, rows: int) -> Tensor:
        """The first ``rows`` rows of buffer ``name`` (``s``, ``t``, ``g``, ``x`` or ``c``): a contiguous view."""
        if name not in self._buffers:
            self._buffers[name] = torch.empty(self.rows, self.vocab, dtype=self.dtype, device=self.device)
        return self._buffers[name][:rows]


def _log_softmax_(z: Tensor, tau: Temperature) -> Tensor:
    """z ← log softmax(z/τ), row by row, in place: torch's own kernel writing over its input, so the very values
    ``log_softmax_at`` gives the objectives (the full path's); under ``torch.compile``, its steps, which inductor
    fuses with what follows."""
    if isinstance(tau, Tensor) or tau != 1.0:
        z.div_(tau)
    if torch.compiler.is_compiling():
        top = z.amax(-1, keepdim=True)
        z.sub_(torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
        return z.sub_(z.exp().sum(-1, keepdim=True).log())
    return torch.log_softmax(z, -1, out=z)


def _pullback_(q: Tensor, u: Tensor, tau: Temperature) -> None:
    """q ← (u − q·Σu)/τ: the gradient with respect to the logits z of a function of log softmax(z/τ)."""
    q.mul_(-u.sum(-1, keepdim=True)).add_(u).div_(tau)


def _zero_where_(values: Tensor, probs: Tensor, zeros: bool) -> Tensor:
    """values ← 0 where probs = 0 (0·log 0 := 0: a masked or underflown entry contributes nothing); a no-op when
    the chunk can hold no zero probability (``zeros`` False, ``may_vanish``), which spares a mask of ``[n, V]``."""
    return values.masked_fill_(probs == 0, 0.0) if zeros else values


def _drop_(values: Tensor, dropped: Optional[Tensor]) -> Tensor:
    """values ← 0 where ``dropped`` (AB's entries −inf in both models); None: nothing is."""
    return values if dropped is None else values.masked_fill_(dropped, 0.0)


def _both_log_softmax_(s: Tensor, t: Tensor, g: Tensor, tau_s: Temperature, tau_t: Temperature) -> None:
    """t ← log p, s ← log q, g ← q."""
    _log_softmax_(t, tau_t)
    torch.exp(_log_softmax_(s, tau_s), out=g)


def _fkl_(s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, zeros: bool) -> Tensor:
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    torch.sub(t, s, out=s)  # log(p/q)
    t.exp_()  # p
    values = _zero_where_(s.mul_(t), t, zeros).sum(-1)
    _pullback_(g, t.neg_(), tau_s)
    return values


def _rkl_(s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, zeros: bool) -> Tensor:
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    u = _zero_where_(s.sub_(t).mul_(g), g, zeros)  # q·log(q/p)
    values = u.sum(-1)
    _pullback_(g, u, tau_s)
    return values


def _sym_kl_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, zeros: bool,
    weight: float = 0.5,
) -> Tensor:
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    torch.exp(t, out=x)  # p
    return _weighted_kl_(s, t, g, x, tau_s, zeros, weight)


def _akl_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, zeros: bool, mu: float
) -> Tensor:
    """Sym-KL weighted by the head/tail gaps, ``AKL_WEIGHT_ROWS`` rows at a time from log p, p and q."""
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    torch.exp(t, out=x)  # p
    weight = torch.cat([akl_head_weight(t[first : first + AKL_WEIGHT_ROWS], x[first : first + AKL_WEIGHT_ROWS],
                                        g[first : first + AKL_WEIGHT_ROWS], mu)
                        for first in range(0, t.shape[0], AKL_WEIGHT_ROWS)])  # fmt: skip
    return _weighted_kl_(s, t, g, x, tau_s, zeros, weight[:, None])


def _weighted_kl_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, zeros: bool, weight: Tensor | float
) -> Tensor:
    """w·FKL + (1 − w)·RKL from s = log q, t = log p, g = q, x = p; ``weight`` is a number or a ``[n, 1]`` column."""
    s.sub_(t)  # log(q/p)
    forward = -_zero_where_(torch.mul(s, x, out=t), x, zeros).sum(-1)
    reverse_u = _zero_where_(s.mul_(g), g, zeros)  # q·log(q/p)
    reverse = reverse_u.sum(-1)
    w = weight.squeeze(-1) if isinstance(weight, Tensor) else weight
    values = w * forward + (1.0 - w) * reverse
    _pullback_(g, reverse_u.mul_(1.0 - weight).sub_(x.mul_(weight)), tau_s)
    return values


def _js_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, beta: float, zeros: bool
) -> Tensor:
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    torch.exp(t, out=x)
    x.mul_(beta).add_(g, alpha=1.0 - beta).log_()  # log M
    s.sub_(x)  # log(q/M)
    torch.sub(t, x, out=x)  # log(p/M)
    t.exp_()  # p
    to_p = _zero_where_(x.mul_(t), t, zeros).sum(-1)
    u = _zero_where_(s.mul_(g), g, zeros)  # q·log(q/M)
    values = beta * to_p + (1.0 - beta) * u.sum(-1)
    _pullback_(g, u.mul_(1.0 - beta), tau_s)
    return values


def _tvd_(s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, zeros: bool) -> Tensor:
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    t.exp_()  # p
    torch.sub(g, t, out=s)  # q − p
    torch.sign(s, out=t)
    values = 0.5 * s.mul_(t).sum(-1)
    _pullback_(g, t.mul_(g), 2.0 * tau_s)  # u = ½·q·sign(q − p): the ½ goes with 1/τ
    return values


def _sfkl_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, alpha: float, zeros: bool
) -> Tensor:
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    torch.exp(t, out=x)
    s.copy_(x)  # p (log q is not needed again)
    x.mul_(alpha).add_(g, alpha=1.0 - alpha).log_()  # log m
    t.sub_(x)  # log(p/m)
    torch.exp(t, out=x)  # p/m
    values = _zero_where_(t.mul_(s), s, zeros).sum(-1)
    _pullback_(g, _zero_where_(x.mul_(g).mul_(alpha - 1.0), g, zeros), tau_s)
    return values


def _srkl_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, alpha: float, zeros: bool
) -> Tensor:
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    torch.exp(t, out=x)
    x.mul_(1.0 - alpha).add_(g, alpha=alpha).log_()  # log m'
    s.sub_(x)  # log(q/m')
    torch.exp(s, out=t)
    t.mul_(-alpha).add_(s)  # h = log(q/m') − α·q/m'
    values = _zero_where_(s.mul_(g), g, zeros).sum(-1)
    _pullback_(g, _zero_where_(t.mul_(g), g, zeros), tau_s)
    return values


def _ab_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, zeros: bool, alpha: float,
    beta: float,
) -> Tensor:
    """The general case α, β, α + β ≠ 0 (``has_kernel``); entries −inf in both models drop out (q = 0 there, so g
    needs no mask)."""
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    dropped = torch.isneginf(t) & torch.isneginf(s) if zeros else None
    _drop_(t, dropped)
    _drop_(s, dropped)
    total = alpha + beta
    torch.mul(t, alpha, out=x).add_(s, alpha=beta).exp_()  # p^α q^β
    s.mul_(total).exp_()  # q^(α+β)
    t.mul_(total).exp_().mul_(-alpha / total).add_(s, alpha=-beta / total).add_(x)
    values = _drop_(t, dropped).sum(-1) / (-alpha * beta)
    c = _drop_(s.sub_(x), dropped)  # q^(α+β) − p^α q^β
    _pullback_(g, c, tau_s * alpha)
    return values


def _drkl_(
    s: Tensor, t: Tensor, g: Tensor, x: Tensor, tau_s: Temperature, tau_t: Temperature, zeros: bool, targets: Tensor,
    gamma: float,
) -> Tensor:
    """DRKL = KL(b_q‖b_p) + γ·KL(q̂‖p̂) (``lit_kd.losses.drkl``). With a = log q_t (clamped to ≤ −eps, as there),
    A = log(1 − e^a), b, B the teacher's: ∂d/∂log q_k = u_k (k ≠ t, above) and
    ∂d/∂a = e^a·(a − b + 1) − e^(a − A)·(e^A·(A − B + 1) − Σ_(k≠t) u_k), zero where the clamp holds."""
    _both_log_softmax_(s, t, g, tau_s, tau_t)
    eps = torch.finfo(s.dtype).eps
    index = targets.long()[:, None]
    raw_a = s.gather(-1, index)
    a, b = raw_a.clamp(max=-eps), t.gather(-1, index).clamp(max=-eps)
    big_a, big_b = log1mexp(a), log1mexp(b)
    binary = kl_from_log_probs(torch.cat([a, big_a], -1), torch.cat([b, big_b], -1))
    t.sub_(big_b)  # log p̂
    torch.sub(s, big_a, out=x)  # log q̂
    torch.sub(x, t, out=t)  # log(q̂/p̂)
    x.exp_().scatter_(-1, index, 0.0)  # q̂, without the target
    non_target = _zero_where_(torch.mul(x, t, out=s), x, zeros)  # q̂·log(q̂/p̂)
    values = binary + gamma * non_target.sum(-1)
    u = non_target.add_(x).mul_(gamma)
    tail = torch.where(big_a > float("-inf"), big_a.exp() * (big_a - big_b + 1.0), torch.zeros_like(big_a))
    head = torch.where(a > float("-inf"), a.exp() * (a - b + 1.0), torch.zeros_like(a))
    u_target = head - torch.exp(a - big_a) * (tail - u.sum(-1, keepdim=True))
    u.scatter_(-1, index, torch.where(raw_a <= -eps, u_target, torch.zeros_like(u_target)))
    _pullback_(g, u, tau_s)
    return values


Kernel = Callable[..., Tensor]
KERNELS: dict[str, Kernel] = {
    "fkl": _fkl_, "rkl": _rkl_, "sym_kl": _sym_kl_, "js": _js_, "tvd": _tvd_, "sfkl": _sfkl_, "srkl": _srkl_,
    "akl": _akl_, "ab": _ab_, "drkl": _drkl_,
}  # fmt: skip
"""Registry name → kernel ``(s, t, g, x, τ_s, τ_t, **hyperparameters) → values [n]``, leaving ∂d/∂z_s in g."""


def has_kernel(config: LossConfig) -> bool:
    """Whether ``chunk_step`` serves this config: its objective has a kernel (AB away from its limits), and no rule
    gives the student a τ that carries a gradient."""
    if config.name not in KERNELS or config.tau_rule == "logit_standardization":
        return False
    if config.name == "ab":
        alpha, beta = config.ab_alpha, config.ab_beta
        return alpha != 0 and beta != 0 and alpha + beta != 0
    return True


def kernel_arguments(
    config: LossConfig, student: Tensor, teacher: Tensor, targets: Tensor, tau_s: Temperature, tau_t: Temperature
) -> dict:
    """The kernel's keyword arguments beyond the buffers and τ: its hyperparameters, and DRKL's targets."""
    hparams = config.hparam_values()
    if config.name == "drkl":
        return {"targets": targets, **hparams}
    return hparams


def as_step_inputs(
    tau_s: Temperature, tau_t: Temperature, squared: bool, like: Tensor, compiled: bool
) -> tuple[Temperature, Temperature, Temperature]:
    """(τ_s, τ_t, scale) as ``chunk_step`` takes them: ``[n, 1]`` columns for per-row τ, and 0-d tensors for numbers
    when ``compiled`` (a τ that changes from step to step must not recompile); scale = τ_s·τ_t when ``squared``."""

    def column(value: Temperature) -> Temperature:
        if isinstance(value, Tensor):
            return value.to(like.dtype)[:, None]
        return torch.tensor(value, dtype=like.dtype, device=like.device) if compiled else value

    scale = squared_factor(tau_s, tau_t, like.dtype) if squared else 1.0
    return column(tau_s), column(tau_t), column(scale)


def chunk_step(
    s: Tensor,
    t: Optional[Tensor],
    g: Tensor,
    x: Optional[Tensor],
    c: Optional[Tensor],
    targets: Tensor,
    tau_s: Temperature,
    tau_t: Temperature,
    scale: Temperature,
    kernel_kwargs: dict,
    name: str,
    kd_ratio: float,
) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """One chunk: (ℓ ``[n]``, CE ``[n]``, s·d ``[n]`` or None, non-finite flags ``[4]``), with ∂ℓ/∂z_s left in ``g``.

    ``s``/``t`` hold the student's/teacher's logits (overwritten; ``t`` None: the LM loss alone); ``c`` is the CE
    gradient's buffer when ``0 < kd_ratio < 1``; τ's are numbers, 0-d tensors or ``[n, 1]`` columns; ``scale`` is
    τ² (``tau_squared_scaling``) or 1."""
    index = targets.long()[:, None]
    top = s.amax(-1, keepdim=True)  # NaN where the row has a NaN, +inf where it has a +inf (and no NaN)
    flags = [top.isnan().any(), top.isposinf().any()]
    torch.sub(s, torch.where(torch.isfinite(top), top, torch.zeros_like(top)), out=g).exp_()
    total = g.sum(-1, keepdim=True)
    ce = (total.log() + top - s.gather(-1, index)).squeeze(-1)  # logsumexp(z) − z_t
    if t is None:
        g.div_(total).scatter_add_(-1, index, torch.full_like(ce[:, None], -1.0))  # softmax(z) − onehot(t)
        return ce, ce, None, torch.stack(flags + [torch.zeros_like(flags[0])] * 2)
    teacher_top = t.amax(-1)
    flags += [teacher_top.isnan().any(), teacher_top.isposinf().any()]
    if c is not None:
        torch.div(g, total, out=c).scatter_add_(-1, index, torch.full_like(ce[:, None], -1.0))
    zeros = name not in NO_MASKS and (may_vanish(s, top, tau_s) or may_vanish(t, teacher_top[:, None], tau_t))
    values = KERNELS[name](s, t, g, x, tau_s, tau_t, zeros=zeros, **kernel_kwargs)
    if isinstance(scale, Tensor) or scale != 1.0:
        values = values * _flat(scale)
        g.mul_(scale)
    if c is None:
        return values, ce, values, torch.stack(flags)
    g.mul_(kd_ratio).add_(c, alpha=1.0 - kd_ratio)
    return (1.0 - kd_ratio) * ce + kd_ratio * values, ce, values, torch.stack(flags)


def may_vanish(logits: Tensor, top: Tensor, tau: Temperature) -> bool:
    """Whether softmax(logits/τ) may hold a zero — a −inf logit, a non-finite row, or a probability below the
    dtype's smallest normal number — so that the kernels must zero 0·log 0 entries. Since
    log softmax(z/τ)_k ≥ −(max z − min z)/τ − log V, a chunk whose spread keeps that bound (less ln 2, for the
    mixtures' halves) above log(tiny) holds none, and its masks are skipped. Always True under ``torch.compile``
    (no data-dependent branch there; inductor fuses the masks)."""
    if torch.compiler.is_compiling():
        return True
    spread = ((top - logits.amin(-1, keepdim=True)) / tau).amax()
    limit = -math.log(torch.finfo(logits.dtype).tiny) - math.log(logits.shape[-1]) - 1.0
    return not bool(spread < limit)  # NaN, +inf or −inf logits: True


def _flat(value: Temperature) -> Temperature:
    return value.reshape(-1) if isinstance(value, Tensor) and value.dim() == 2 else value


NO_MASKS = frozenset({"tvd"})
"""Kernels without 0·log 0 terms, for which ``chunk_step`` need not ask ``may_vanish``."""

SCRATCH = frozenset({"sym_kl", "js", "sfkl", "srkl", "akl", "ab", "drkl"})
"""The kernels that use the scratch buffer ``x`` (the others run in three blocks)."""

EAGER_WHEN_COMPILED = frozenset({"tvd", "akl", "ab", "rkl"})
"""Objectives that ``compile_loss`` runs eagerly: compiled, their step held more than 0.10× the full path's peak
(``benchmarks/loss_memory.py`` at V = 50,257, 4,096 rows: TVD 0.118, AKL 0.110, AB 0.104, RKL 0.1003 against
0.082, 0.080, 0.085 and 0.068 eager), where the eager kernels stay below it for all ten."""

_COMPILED: list[Callable] = []
_FAILED: set[str] = set()


def _step_on_copies(
    s: Tensor, t: Optional[Tensor], g: Tensor, x: Optional[Tensor], c: Optional[Tensor], *rest
) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """``chunk_step`` on copies of the logits and fresh scratch: to ``torch.compile`` a function of the logits that
    writes ``g`` only, whose intermediate blocks inductor need not materialize (the in-place form, compiled, keeps
    every mutated buffer: 0.72 against 0.62 GiB for JS at 4,096 rows × 50,257)."""
    x, c = (None if buffer is None else torch.empty_like(s) for buffer in (x, c))
    return chunk_step(s.clone(), None if t is None else t.clone(), g, x, c, *rest)


def compiled_step(name: str) -> Optional[Callable]:
    """``chunk_step`` through ``torch.compile`` (inductor: C++ on CPU, Triton on CUDA; its default automatic dynamic
    shapes: a second compilation when the row count first changes, then none — ``dynamic=True`` would also trace the
    objective's float hyperparameters as inputs, which gave wrong JS values for β ≠ 0.1 here); None
    once compilation has failed for objective ``name`` (``compile_failed``), and for ``EAGER_WHEN_COMPILED``
    (said once)."""
    if name in _FAILED:
        return None
    if name in EAGER_WHEN_COMPILED:
        _FAILED.add(name)
        log.warning("lit_kd: model.compile_loss: the %s loss kernel runs eagerly (compiled, its step holds more "
                    "than 0.10x the full-logits path's memory; eager, less)", name)  # fmt: skip
        return None
    if not _COMPILED:
        _COMPILED.append(torch.compile(_step_on_copies))
    return _COMPILED[0]


def compile_failed(name: str, error: BaseException) -> None:
    """Remember that ``name``'s compiled step failed, and say so once; the eager kernel runs from now on."""
    _FAILED.add(name)
    log.warning("lit_kd: torch.compile of the %s loss kernel failed (%s: %s); running it eagerly",
                name, type(error).__name__, str(error).splitlines()[0] if str(error) else "")  # fmt: skip
