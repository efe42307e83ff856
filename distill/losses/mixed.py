"""CE + KD (+ extra terms such as an MoE balance loss) in one pass, with scheduled weights.

Why one pass: on the hidden-state path CE and KD share each chunk's logits, so the lm_head
matmuls run once instead of twice.
"""

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor, nn

from distill.losses.reduction import reduce_row_losses
from distill.losses.targets import Student, Teacher, check_labels, student_shape
from distill.losses.terms import ce_row_loss

if TYPE_CHECKING:
    from distill.losses.modules import DistillationLoss

Schedule = float | Callable[[int], float]


class MixedLossOutput(NamedTuple):
    total: Tensor  # the weighted sum to backpropagate
    parts: dict[str, Tensor]  # unweighted, detached: "ce", "kd" and each extra term
    weights: dict[str, float]  # the weights used at this step


def linear_ramp(start: float, end: float, num_steps: int, *, begin: int = 0) -> Callable:
    """step -> weight: `start` until `begin`, linear to `end` over `num_steps`, then `end`."""
    if num_steps < 1:
        raise ValueError(f"num_steps: expected >= 1, got {num_steps}")

    def weight(step: int) -> float:
        progress = min(max((step - begin) / num_steps, 0.0), 1.0)
        return start + (end - start) * progress

    return weight


def resolve(weight: Schedule, step: int | None) -> float:
    if not callable(weight):
        return float(weight)
    if step is None:
        raise ValueError("a scheduled weight needs step=...")
    return float(weight(step))


def mixed_loss(
    student: Student,
    teacher: Teacher,
    labels: Tensor,
    *,
    kd_loss: "DistillationLoss",
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    extra: Mapping[str, tuple[Tensor, float]] | None = None,
    num_items: float | Tensor | Mapping[str, float] | None = None,
) -> MixedLossOutput:
    """ce_weight * CE + kd_weight * KD + sum(weight * extra). kd_loss brings the divergence,
    temperature, tail mode, ignore_index and chunk size. num_items: one count for both terms,
    or {"ce": n, "kd": m} to divide each by its own (see reduction.py). Extra terms are added
    as given (not divided by num_items): reduce them yourself."""
    n_rows, vocab = student_shape(student)
    terms = {
        "ce": (ce_row_loss(labels, n_rows, vocab, kd_loss.ignore_index), ce_weight),
        "kd": (kd_loss.row_loss(teacher, n_rows, vocab), kd_weight),
    }
    total, parts = reduce_row_losses(
        student, terms, check_labels(labels, n_rows), ignore_index=kd_loss.ignore_index,
        num_items=num_items, chunk_size=kd_loss.chunk_size,
    )
    weights = {"ce": float(ce_weight), "kd": float(kd_weight)}
    for name, (value, weight) in (extra or {}).items():
        total = total + weight * value
        parts[name] = value.detach()
        weights[name] = float(weight)
    return MixedLossOutput(total, parts, weights)


class MixedLoss(nn.Module):
    """ce_weight * CE + kd_weight * KD (+ extra terms); weights may be step -> weight callables.

    >>> loss = MixedLoss(ForwardKL(temperature=2.0), kd_weight=linear_ramp(0.0, 1.0, 1000))
    >>> out = loss(student_logits, teacher, labels, step=step,
    ...            extra={"moe_balance": (aux_loss, 0.01)})
    >>> out.total.backward(); log(out.parts)
    """

    def __init__(self, kd_loss: "DistillationLoss", *, ce_weight: Schedule = 1.0,
                 kd_weight: Schedule = 1.0):
        super().__init__()
        self.kd_loss = kd_loss
        self.ce_weight, self.kd_weight = ce_weight, kd_weight

    def forward(
        self,
        student: Student,
        teacher: Teacher,
        labels: Tensor,
        *,
        step: int | None = None,
        num_items: float | Tensor | Mapping[str, float] | None = None,
        extra: Mapping[str, tuple[Tensor, Schedule]] | None = None,
    ) -> MixedLossOutput:
        extra = {name: (value, resolve(w, step)) for name, (value, w) in (extra or {}).items()}
        return mixed_loss(
            student, teacher, labels, kd_loss=self.kd_loss,
            ce_weight=resolve(self.ce_weight, step), kd_weight=resolve(self.kd_weight, step),
            extra=extra, num_items=num_items,
        )
