"""The KD losses as ``nn.Module``s, and the registry that names them: the one extension point.

``DistillationLoss`` is the base (as Liger-Kernel's distillation base): alignment of the teacher
(dense or cached top-k), temperature, masking, chunking and reduction live here. A new
divergence is one function in ``divergences.py`` and one registered subclass here that names it
and declares its options::

    @register_loss("my_kl")
    class MyKL(DistillationLoss):
        divergence_fn = staticmethod(divergences.my_kl)
        options = {"alpha": 0.5}     # name -> default; each checked to lie in [0, 1]

The recipe's ``loss.divergence`` choices, the check of ``loss.options``, the trainer's
construction and the functional API (``functional.py``) are all derived from ``LOSSES``.
"""

from typing import ClassVar

from torch import Tensor, nn

from distill.losses import divergences
from distill.losses.chunked import RowLoss
from distill.losses.reduction import DEFAULT_CHUNK_SIZE, reduce_row_losses
from distill.losses.targets import Student, Teacher, check_labels, student_shape
from distill.losses.terms import Divergence, ce_row_loss, check_options, kd_row_loss
from distill.losses.uld import uld_row_loss

LOSSES: dict[str, type["DistillationLoss"]] = {}


def register_loss(name: str):
    """Class decorator: make a DistillationLoss subclass choosable as ``loss.divergence: name``."""

    def add(cls: type["DistillationLoss"]) -> type["DistillationLoss"]:
        if name in LOSSES:
            raise ValueError(f"a loss named {name!r} is registered already ({LOSSES[name]})")
        cls.registry_name = name
        LOSSES[name] = cls
        return cls

    return add


def check_divergence_options(name: str, options: dict[str, float]) -> dict[str, float]:
    """``options`` completed with the loss's defaults; ValueError naming what is wrong.

    Every option of the shipped losses is a mixing weight in [0, 1] (JSD's beta, skew's lambda).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
    known = LOSSES[name].options
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(known) if known else "none"
        raise ValueError(f"{name} takes no option {', '.join(map(repr, unknown))} "
                         f"(its options: {allowed})")
    merged = {**known, **options}
    for key, value in merged.items():
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} option {key}: expected a value in [0, 1], got {value}")
    return merged


def build_loss(name: str, **kwargs) -> "DistillationLoss":
    """``LOSSES[name](**kwargs)``, with a clear error for an unknown name."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)


class DistillationLoss(nn.Module):
    """KD loss: ``divergence_fn(student_logp, teacher_logp, **options) -> [n]`` on aligned rows.

    Options common to every loss: ``temperature`` (> 0), ``tail`` ("bucket" or "renorm": the
    teacher mass outside a cached top-k), ``scale_by_t_squared``, ``ignore_index`` and
    ``chunk_size`` (token rows per chunk on the hidden-state path). A subclass's own options
    (``options`` class attribute) come as keywords, e.g. ``GeneralizedJSD(beta=0.3)``.
    forward returns sum over target rows / ``num_items`` (default: this call's target count).
    """

    registry_name: ClassVar[str] = ""
    divergence_fn: ClassVar[Divergence | None] = None
    options: ClassVar[dict[str, float]] = {}

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        tail: str = "bucket",
        scale_by_t_squared: bool = True,
        ignore_index: int = -100,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **options: float,
    ):
        super().__init__()
        check_options(temperature, tail)
        self.temperature, self.tail = temperature, tail
        self.scale_by_t_squared = scale_by_t_squared
        self.ignore_index, self.chunk_size = ignore_index, chunk_size
        self.divergence_options = (check_divergence_options(self.registry_name, options)
                                   if self.registry_name else dict(options))

    def divergence(self, student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
        """Per-row divergence [n] between aligned log-probabilities [n, C]."""
        if self.divergence_fn is None:
            raise NotImplementedError(f"{type(self).__name__} defines no divergence_fn")
        return type(self).divergence_fn(student_logp, teacher_logp, **self.divergence_options)

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
        n_rows, vocab = student_shape(student)
        total, _ = reduce_row_losses(
            student, {"kd": (self.row_loss(teacher, n_rows, vocab), 1.0)},
            check_labels(labels, n_rows), ignore_index=self.ignore_index,
            num_items=num_items, chunk_size=self.chunk_size,
        )
        return total


@register_loss("forward_kl")
class ForwardKL(DistillationLoss):
    """KL(teacher || student): mean-seeking, the classic KD loss (Hinton et al., 2015)."""

    divergence_fn = staticmethod(divergences.forward_kl)


@register_loss("reverse_kl")
class ReverseKL(DistillationLoss):
    """KL(student || teacher): mode-seeking (MiniLLM, Gu et al., 2024)."""

    divergence_fn = staticmethod(divergences.reverse_kl)


@register_loss("jsd")
class GeneralizedJSD(DistillationLoss):
    """Generalised JSD scaled so beta=0 / 1 are forward / reverse KL (GKD, Agarwal et al., 2024)."""

    divergence_fn = staticmethod(divergences.generalized_jsd)
    options = {"beta": 0.5}


@register_loss("tvd")
class TotalVariation(DistillationLoss):
    """0.5 * sum |p - q|: bounded in [0, 1], symmetric."""

    divergence_fn = staticmethod(divergences.total_variation)


@register_loss("skew_forward_kl")
class SkewForwardKL(DistillationLoss):
    """KL(p || skew*p + (1-skew)*q) (DistiLLM, Ko et al., 2024); skew=0 is forward KL."""

    divergence_fn = staticmethod(divergences.skew_forward_kl)
    options = {"skew": 0.1}


@register_loss("skew_reverse_kl")
class SkewReverseKL(DistillationLoss):
    """KL(q || skew*q + (1-skew)*p) (DistiLLM); skew=0 is reverse KL."""

    divergence_fn = staticmethod(divergences.skew_reverse_kl)
    options = {"skew": 0.1}


@register_loss("uld")
class ULD(DistillationLoss):
    """Universal Logit Distillation (Boizard et al., 2024): L1 between sorted distributions, so
    the teacher may use another tokenizer (uld.py)."""

    def row_loss(self, teacher: Teacher, n_rows: int, vocab: int) -> RowLoss:
        return uld_row_loss(
            teacher, n_rows, temperature=self.temperature, tail=self.tail,
            scale_by_t_squared=self.scale_by_t_squared,
        )


class CrossEntropy(nn.Module):
    """Hard-label cross-entropy with the same masking, reduction and chunking as KD."""

    def __init__(self, *, ignore_index: int = -100, chunk_size: int = DEFAULT_CHUNK_SIZE):
        super().__init__()
        self.ignore_index, self.chunk_size = ignore_index, chunk_size

    def forward(self, student: Student, labels: Tensor, num_items=None) -> Tensor:
        n_rows, vocab = student_shape(student)
        total, _ = reduce_row_losses(
            student, {"ce": (ce_row_loss(labels, n_rows, vocab, self.ignore_index), 1.0)},
            check_labels(labels, n_rows), ignore_index=self.ignore_index,
            num_items=num_items, chunk_size=self.chunk_size,
        )
        return total
