"""Functional losses, one per registered KD loss (``modules.LOSSES``), the same names as
``torch.nn.functional`` users expect. Every one takes the same inputs:

student: logits [..., V], or HiddenStates(hidden [..., H], weight [V, H], bias) for the
    chunked path that never materialises [N, V] logits.
teacher: logits [..., V] (dense) or TopKTargets(ids [..., k], logprobs [..., k]) (cached).
    The teacher is a constant target: it never receives a gradient.
labels: [...] one per student row, already shifted; rows whose label == ignore_index count
    for nothing. None means every row counts (KD only; cross_entropy needs labels).
temperature: softmax(logits / T); cached log-probs are tempered as p^(1/T) renormalised.
tail: what to do with teacher mass outside a top-k, "renorm" or "bucket" (see alignment.py).
scale_by_t_squared: multiply the loss by T^2 (default True, Hinton et al.).
num_items: divide the summed loss by this many tokens instead of this call's target count;
    pass the full batch's count to each micro-batch for exact gradient accumulation.
chunk_size: token rows per chunk on the hidden-state path.
Options of one divergence (JSD's ``beta``, skew's ``skew``) are keywords of its function.

Returns a scalar: sum over target rows / num_items.
"""

from collections.abc import Callable

from torch import Tensor

from distill.losses.mixed import MixedLossOutput, mixed_loss
from distill.losses.modules import LOSSES, CrossEntropy, DistillationLoss
from distill.losses.reduction import DEFAULT_CHUNK_SIZE
from distill.losses.targets import Student, Teacher
from distill.losses.terms import Divergence

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MixedLossOutput",
    "cross_entropy",
    "distillation_loss",
    "forward_kl",
    "generalized_jsd",
    "mixed_loss",
    "reverse_kl",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
    "uld",
]


def _functional(name: str, function_name: str) -> Callable[..., Tensor]:
    """``LOSSES[name]`` as a function: module options and tensors in one call."""
    loss_class = LOSSES[name]

    def loss(student: Student, teacher: Teacher, labels: Tensor | None = None, *,
             num_items: float | Tensor | None = None, **options) -> Tensor:
        return loss_class(**options)(student, teacher, labels, num_items=num_items)

    loss.__name__ = loss.__qualname__ = function_name
    own = ", ".join(f"{key}={value}" for key, value in loss_class.options.items())
    loss.__doc__ = (f"{loss_class.__doc__}\n\nRegistered as loss.divergence: {name!r}"
                    + (f"; options: {own}." if own else "."))
    return loss


forward_kl = _functional("forward_kl", "forward_kl")
reverse_kl = _functional("reverse_kl", "reverse_kl")
generalized_jsd = _functional("jsd", "generalized_jsd")
total_variation = _functional("tvd", "total_variation")
skew_forward_kl = _functional("skew_forward_kl", "skew_forward_kl")
skew_reverse_kl = _functional("skew_reverse_kl", "skew_reverse_kl")
uld = _functional("uld", "uld")


class _CustomDivergence(DistillationLoss):
    """A divergence given as a callable, not registered (``distillation_loss``)."""

    def __init__(self, divergence: Divergence, **options):
        super().__init__(**options)
        self.custom = divergence

    def divergence(self, student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
        return self.custom(student_logp, teacher_logp)


def distillation_loss(divergence: Divergence, student: Student, teacher: Teacher,
                      labels: Tensor | None = None, *, num_items: float | Tensor | None = None,
                      **options) -> Tensor:
    """Any ``divergence(student_logp, teacher_logp) -> [n]`` as a full KD loss (try one out
    before registering it in modules.py)."""
    return _CustomDivergence(divergence, **options)(student, teacher, labels, num_items=num_items)


def cross_entropy(student: Student, labels: Tensor, *, ignore_index: int = -100,
                  num_items: float | Tensor | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Hard-label cross-entropy with the same masking, reduction and chunking as KD."""
    return CrossEntropy(ignore_index=ignore_index, chunk_size=chunk_size)(
        student, labels, num_items=num_items)
