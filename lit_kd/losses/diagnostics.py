"""KD diagnostics: what τ does to the teacher's target and to the student's gradient, per batch.

All quantities are at the step's τ (each token's τ_t under a ``tau_rule``) and averaged over response tokens:

* ``teacher_entropy``          H(p) = −Σ_k p_k log p_k
* ``teacher_nontarget_mass``   1 − p_t, t the label token (how much the softened teacher spreads away from it)
* ``top1_agreement``           fraction of tokens where argmax z_s = argmax z_t
* ``kd_grad_target_norm``      |∂d_i/∂z_s,t|, the KD gradient on the label-token logit
* ``kd_grad_nontarget_norm``   ‖∂d_i/∂z_s,k‖₂ over k ≠ t

d_i is the per-token KD term of the configured objective (``kd_term``: at its temperatures, × τ² when
``tau_squared_scaling``); its gradient is taken with respect to a detached copy of the student logits, so the
model is untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_kd.losses.core import detached, entropy, log_softmax_at
from lit_kd.losses.registry import LossConfig, kd_term

DIAGNOSTICS = ("teacher_entropy", "teacher_nontarget_mass", "top1_agreement", "kd_grad_target_norm",
               "kd_grad_nontarget_norm")  # fmt: skip
"""The names ``kd_diagnostics`` returns, in order (a run logs them as ``diag/<name>``)."""


def kd_diagnostics(
    config: LossConfig, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
) -> dict[str, Tensor]:
    """Diagnostics over flattened response rows ``[M, V]`` with their label tokens ``[M]``."""
    student_logits, teacher_logits = student_logits.detach(), teacher_logits.detach()
    index = targets.long()[:, None]
    with torch.enable_grad():
        leaf = student_logits.float().requires_grad_(True)
        term = kd_term(config, leaf, teacher_logits, targets)
        (grad,) = torch.autograd.grad(term.values.sum(), leaf)
    with torch.no_grad():
        log_p = log_softmax_at(teacher_logits, detached(term.teacher_tau))
        teacher_entropy = entropy(log_p)
        nontarget_mass = 1.0 - log_p.gather(-1, index).squeeze(-1).exp()
        agreement = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()
    grad_target = grad.gather(-1, index).squeeze(-1)
    grad_nontarget = grad.scatter(-1, index, 0.0).norm(dim=-1)
    values = (teacher_entropy, nontarget_mass, agreement, grad_target.abs(), grad_nontarget)
    return {name: value.mean() for name, value in zip(DIAGNOSTICS, values)}
