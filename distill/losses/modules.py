"""nn.Module twins of the functional losses: options at construction, tensors in forward.

DistillationLoss is the base class (as Liger-Kernel's distillation base): alignment,
temperature, masking, chunking and reduction live here; a subclass only defines
`divergence(student_logp, teacher_logp) -> [n]`.
"""

from torch import Tensor, nn

from distill.losses import divergences
from distill.losses import functional as F
from distill.losses.chunked import RowLoss
from distill.losses.reduction import DEFAULT_CHUNK_SIZE
from distill.losses.targets import Student, Teacher
from distill.losses.terms import check_options, kd_row_loss
from distill.losses.uld import uld_row_loss


class DistillationLoss(nn.Module):
    def __init__(
        self,
        *,
        temperature: float = 1.0,
        tail: str = "bucket",
        scale_by_t_squared: bool = True,
        ignore_index: int = -100,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ):
        super().__init__()
        check_options(temperature, tail)
        self.temperature, self.tail = temperature, tail
        self.scale_by_t_squared = scale_by_t_squared
        self.ignore_index, self.chunk_size = ignore_index, chunk_size

    def divergence(self, student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
        raise NotImplementedError

    def row_loss(self, teacher: Teacher, n_rows: int, vocab: int) -> RowLoss:
        """The per-row loss, for combining with other terms in one pass (MixedLoss)."""
        return kd_row_loss(
            self.divergence, teacher, n_rows, vocab, temperature=self.temperature,
            tail=self.tail, scale_by_t_squared=self.scale_by_t_squared,
        )

    def forward(
        self,
        student: Student,
        teacher: Teacher,
        labels: Tensor | None = None,
        num_items: float | Tensor | None = None,
    ) -> Tensor:
        return F.distillation_loss(
            self.divergence, student, teacher, labels, temperature=self.temperature,
            tail=self.tail, scale_by_t_squared=self.scale_by_t_squared,
            ignore_index=self.ignore_index, num_items=num_items, chunk_size=self.chunk_size,
        )


class ForwardKL(DistillationLoss):
    def divergence(self, student_logp, teacher_logp):
        return divergences.forward_kl(student_logp, teacher_logp)


class ReverseKL(DistillationLoss):
    def divergence(self, student_logp, teacher_logp):
        return divergences.reverse_kl(student_logp, teacher_logp)


class GeneralizedJSD(DistillationLoss):
    def __init__(self, beta: float = 0.5, **options):
        super().__init__(**options)
        F._check_unit_interval("beta", beta)
        self.beta = beta

    def divergence(self, student_logp, teacher_logp):
        return divergences.generalized_jsd(student_logp, teacher_logp, self.beta)


class TotalVariation(DistillationLoss):
    def divergence(self, student_logp, teacher_logp):
        return divergences.total_variation(student_logp, teacher_logp)


class SkewForwardKL(DistillationLoss):
    def __init__(self, skew: float = 0.1, **options):
        super().__init__(**options)
        F._check_unit_interval("skew", skew)
        self.skew = skew

    def divergence(self, student_logp, teacher_logp):
        return divergences.skew_forward_kl(student_logp, teacher_logp, self.skew)


class SkewReverseKL(DistillationLoss):
    def __init__(self, skew: float = 0.1, **options):
        super().__init__(**options)
        F._check_unit_interval("skew", skew)
        self.skew = skew

    def divergence(self, student_logp, teacher_logp):
        return divergences.skew_reverse_kl(student_logp, teacher_logp, self.skew)


class ULD(DistillationLoss):
    """Universal Logit Distillation; the teacher may use another tokenizer (uld.py)."""

    def row_loss(self, teacher: Teacher, n_rows: int, vocab: int) -> RowLoss:
        return uld_row_loss(
            teacher, n_rows, temperature=self.temperature, tail=self.tail,
            scale_by_t_squared=self.scale_by_t_squared,
        )

    def forward(self, student, teacher, labels=None, num_items=None):
        return F.uld(
            student, teacher, labels, temperature=self.temperature, tail=self.tail,
            scale_by_t_squared=self.scale_by_t_squared, ignore_index=self.ignore_index,
            num_items=num_items, chunk_size=self.chunk_size,
        )


class CrossEntropy(nn.Module):
    def __init__(self, *, ignore_index: int = -100, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        self.ignore_index, self.chunk_size = ignore_index, chunk_size

    def forward(self, student: Student, labels: Tensor, num_items=None) -> Tensor:
        return F.cross_entropy(
            student, labels, ignore_index=self.ignore_index, num_items=num_items,
            chunk_size=self.chunk_size,
        )
