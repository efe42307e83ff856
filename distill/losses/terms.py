"""Row losses: what one token row costs, as closures the reduction runs chunk by chunk.

A row loss is called with (student logits rows [c, V] in fp32, rows) where `rows` indexes the
flattened inputs (a slice or index tensor), so it can fetch its own teacher rows / labels.
"""

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from distill.losses.alignment import TAIL_MODES, aligned_log_probs
from distill.losses.chunked import RowLoss
from distill.losses.targets import Teacher, check_labels, check_teacher, take_rows

Divergence = Callable[[Tensor, Tensor], Tensor]


def check_options(temperature: float, tail: str) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    if tail not in TAIL_MODES:
        raise ValueError(f"tail: expected one of {TAIL_MODES}, got {tail!r}")


def temperature_scale(temperature: float, scale_by_t_squared: bool) -> float:
    """T^2 keeps gradient magnitudes comparable across temperatures (Hinton et al.)."""
    return temperature**2 if scale_by_t_squared else 1.0


def kd_row_loss(
    divergence: Divergence,
    teacher: Teacher,
    n_rows: int,
    vocab: int,
    *,
    temperature: float,
    tail: str,
    scale_by_t_squared: bool,
) -> RowLoss:
    check_options(temperature, tail)
    teacher = check_teacher(teacher, n_rows, vocab)
    scale = temperature_scale(temperature, scale_by_t_squared)

    def loss_rows(student_logits: Tensor, rows) -> Tensor:
        student_logp, teacher_logp = aligned_log_probs(
            student_logits, take_rows(teacher, rows), temperature=temperature, tail=tail
        )
        return divergence(student_logp, teacher_logp) * scale

    return loss_rows


def ce_row_loss(labels: Tensor | None, n_rows: int, vocab: int, ignore_index: int) -> RowLoss:
    """Hard-label cross-entropy; rows are already filtered to targets, so labels are valid."""
    if labels is None:
        raise ValueError("cross_entropy: labels are required")
    labels = check_labels(labels, n_rows)
    targets = labels[labels != ignore_index]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"labels: expected ids in [0, {vocab}) or ignore_index={ignore_index}, "
            f"got range [{int(targets.min())}, {int(targets.max())}]"
        )

    def loss_rows(student_logits: Tensor, rows) -> Tensor:
        return F.cross_entropy(student_logits, labels[rows].long(), reduction="none")

    return loss_rows
