"""Distillation losses that depend on torch alone.

    from distill.losses import ForwardKL, MixedLoss, TopKTargets, HiddenStates
    from distill.losses import functional as LF

Students: logits [..., V] or HiddenStates(hidden, lm_head weight, bias) (chunked, never
materialises [N, V]). Teachers: logits [..., V] or TopKTargets(ids, logprobs) (cached top-k).
"""

from distill.losses import divergences, functional
from distill.losses.mixed import MixedLoss, MixedLossOutput, linear_ramp
from distill.losses.modules import (
    LOSSES,
    ULD,
    CrossEntropy,
    DistillationLoss,
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewForwardKL,
    SkewReverseKL,
    TotalVariation,
    build_loss,
    register_loss,
)
from distill.losses.targets import HiddenStates, TopKTargets

__all__ = [
    "LOSSES",
    "CrossEntropy",
    "DistillationLoss",
    "ForwardKL",
    "GeneralizedJSD",
    "HiddenStates",
    "MixedLoss",
    "MixedLossOutput",
    "ReverseKL",
    "SkewForwardKL",
    "SkewReverseKL",
    "TopKTargets",
    "TotalVariation",
    "ULD",
    "divergences",
    "functional",
    "build_loss",
    "linear_ramp",
    "register_loss",
]
