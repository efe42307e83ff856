"""Functional losses. Every one takes the same inputs:

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

Returns a scalar: sum over target rows / num_items.
"""

from functools import partial

from torch import Tensor

from distill.losses import divergences
from distill.losses.mixed import MixedLossOutput, mixed_loss
from distill.losses.reduction import DEFAULT_CHUNK_SIZE, reduce_row_losses
from distill.losses.targets import Student, Teacher, check_labels, student_shape
from distill.losses.terms import Divergence, ce_row_loss, kd_row_loss
from distill.losses.uld import uld_row_loss

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


def distillation_loss(
    divergence: Divergence,
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Any divergence(student_logp, teacher_logp) -> [n] as a full KD loss."""
    n_rows, vocab = student_shape(student)
    term = kd_row_loss(
        divergence, teacher, n_rows, vocab,
        temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared,
    )
    total, _ = reduce_row_losses(
        student, {"kd": (term, 1.0)}, check_labels(labels, n_rows),
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )
    return total


def forward_kl(
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """KL(teacher || student), the classic KD loss."""
    return distillation_loss(
        divergences.forward_kl, student, teacher, labels,
        temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared,
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )


def reverse_kl(
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """KL(student || teacher), mode-seeking."""
    return distillation_loss(
        divergences.reverse_kl, student, teacher, labels,
        temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared,
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )


def generalized_jsd(
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Scaled generalised JSD: beta=0 is forward KL, beta=1 reverse KL (see divergences.py)."""
    _check_unit_interval('beta', beta)
    return distillation_loss(
        partial(divergences.generalized_jsd, beta=beta), student, teacher, labels,
        temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared,
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )


def total_variation(
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """0.5 * sum |p - q|."""
    return distillation_loss(
        divergences.total_variation, student, teacher, labels,
        temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared,
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )


def skew_forward_kl(
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    skew: float = 0.1,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """KL(p || skew*p + (1-skew)*q) (DistiLLM); skew=0 is forward KL."""
    _check_unit_interval('skew', skew)
    return distillation_loss(
        partial(divergences.skew_forward_kl, skew=skew), student, teacher, labels,
        temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared,
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )


def skew_reverse_kl(
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    skew: float = 0.1,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """KL(q || skew*q + (1-skew)*p) (DistiLLM); skew=0 is reverse KL."""
    _check_unit_interval('skew', skew)
    return distillation_loss(
        partial(divergences.skew_reverse_kl, skew=skew), student, teacher, labels,
        temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared,
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )


def uld(
    student: Student,
    teacher: Teacher,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    tail: str = "bucket",
    scale_by_t_squared: bool = True,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Universal Logit Distillation: L1 between sorted distributions; vocabularies may differ."""
    n_rows, _ = student_shape(student)
    term = uld_row_loss(
        teacher, n_rows, temperature=temperature, tail=tail, scale_by_t_squared=scale_by_t_squared
    )
    total, _ = reduce_row_losses(
        student, {"uld": (term, 1.0)}, check_labels(labels, n_rows),
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )
    return total


def cross_entropy(
    student: Student,
    labels: Tensor,
    *,
    ignore_index: int = -100,
    num_items: float | Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Hard-label cross-entropy with the same masking, reduction and chunking as KD."""
    n_rows, vocab = student_shape(student)
    term = ce_row_loss(labels, n_rows, vocab, ignore_index)
    total, _ = reduce_row_losses(
        student, {"ce": (term, 1.0)}, check_labels(labels, n_rows),
        ignore_index=ignore_index, num_items=num_items, chunk_size=chunk_size,
    )
    return total


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value}")
