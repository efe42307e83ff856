"""Divergences between aligned rows of log-probabilities: THE extension point.

Each function takes (student_logp, teacher_logp), both [n, C] over the same categories,
and returns the per-row divergence [n]. Temperature, tails, masking, chunking and reduction
are handled around it, so a new divergence is one small function here and one registered
class in modules.py (``register_loss``), from which the recipe and the functional API follow.

Conventions: P = teacher, Q = student. Zero-probability categories contribute 0 (0 log 0 = 0).
"""

import math

import torch
from torch import Tensor


def kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P || Q) per row; categories with p = 0 contribute nothing (and no NaN gradients)."""
    p = log_p.exp()
    gap = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    return (p * gap).sum(-1)


def forward_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """KL(teacher || student): mean-seeking, the classic Hinton KD loss."""
    return kl(teacher_logp, student_logp)


def reverse_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """KL(student || teacher): mode-seeking (MiniLLM)."""
    return kl(student_logp, teacher_logp)


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """Generalised JSD, scaled so beta=0/1 are exactly forward/reverse KL.

    With M = beta*P + (1-beta)*Q (TRL GKD's mixture), this returns
        [beta*KL(P||M) + (1-beta)*KL(Q||M)] / (beta*(1-beta)),
    which is continuous in beta and tends to KL(P||Q) as beta -> 0 and KL(Q||P) as beta -> 1.
    TRL's generalized_jsd_loss equals beta*(1-beta) times this for 0 < beta < 1; the
    unscaled value is at most the binary entropy H(beta) <= ln 2 (so 4 ln 2 here at 0.5).
    """
    if beta == 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    log_m = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log1p(-beta))
    unscaled = beta * kl(teacher_logp, log_m) + (1 - beta) * kl(student_logp, log_m)
    return unscaled / (beta * (1 - beta))


def total_variation(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """0.5 * sum |p - q|: bounded in [0, 1], symmetric."""
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b)."""
    if weight_a == 0.0:
        return log_b
    if weight_a == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def skew_forward_kl(student_logp: Tensor, teacher_logp: Tensor, skew: float) -> Tensor:
    """KL(p || skew*p + (1-skew)*q) (DistiLLM): skew > 0 keeps the ratio bounded."""
    return kl(teacher_logp, _log_mix(teacher_logp, student_logp, skew))


def skew_reverse_kl(student_logp: Tensor, teacher_logp: Tensor, skew: float) -> Tensor:
    """KL(q || skew*q + (1-skew)*p) (DistiLLM)."""
    return kl(student_logp, _log_mix(student_logp, teacher_logp, skew))
