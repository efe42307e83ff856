"""Universal Logit Distillation (Boizard et al., 2024) for teachers with another tokenizer.

Why sorting: with different vocabularies there is no id-to-id map, so ULD compares the two
distributions after sorting each in descending order (zero-padding the shorter one) and
takes the L1 distance. The caller aligns rows (positions) between the two tokenizations.

From cached top-k (k ids of the TEACHER's vocab, so they are never looked up in the
student's): the student side is its own top-k.
- renorm: both top-k renormalised, k categories.
- bucket: both top-k plus a rest category (mass outside each side's own top-k), tempered as
  k+1 coarse categories like the KD bucket (see alignment.py); rests are compared to rests
  (the teacher's stored rest when the cache has one).
  No floor on the rests: L1 takes no logarithm, so an empty rest is simply 0.
Temperature: softmax(logits / T) for dense, p^(1/T) renormalised for the cached top-k.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.alignment import kept_and_rest_log_probs, teacher_rest_log_mass, temper
from distill.losses.chunked import RowLoss
from distill.losses.targets import Teacher, TopKTargets, check_teacher, take_rows
from distill.losses.terms import check_options, temperature_scale


def uld_row_loss(
    teacher: Teacher,
    n_rows: int,
    *,
    temperature: float,
    tail: str,
    scale_by_t_squared: bool,
) -> RowLoss:
    check_options(temperature, tail)
    teacher = check_teacher(teacher, n_rows, vocab=None)
    scale = temperature_scale(temperature, scale_by_t_squared)

    def loss_rows(student_logits: Tensor, rows) -> Tensor:
        student, teacher_rows = sorted_probs(
            student_logits, take_rows(teacher, rows), temperature=temperature, tail=tail
        )
        return (student - teacher_rows).abs().sum(-1) * scale

    return loss_rows


def _pad_to(probs: Tensor, width: int) -> Tensor:
    return F.pad(probs, (0, width - probs.shape[-1]))


def sorted_probs(
    student_logits: Tensor, teacher: Teacher, *, temperature: float, tail: str
) -> tuple[Tensor, Tensor]:
    """(student, teacher) probabilities [n, C], sorted descending, zero-padded to equal C."""
    if not isinstance(teacher, TopKTargets):
        student = F.softmax(student_logits / temperature, dim=-1).sort(-1, descending=True).values
        teacher_logits = teacher.detach().to(student_logits.dtype)
        teacher = F.softmax(teacher_logits / temperature, dim=-1).sort(-1, descending=True).values
        width = max(student.shape[-1], teacher.shape[-1])
        return _pad_to(student, width), _pad_to(teacher, width)

    k = teacher.ids.shape[-1]
    vocab = student_logits.shape[-1]
    teacher_kept = teacher.logprobs.detach().to(student_logits.dtype).sort(-1, descending=True)
    teacher_kept = teacher_kept.values
    top = student_logits.topk(min(k, vocab), dim=-1)
    if tail == "renorm":
        student = _pad_to(F.softmax(top.values / temperature, dim=-1), k)
        return student, F.softmax(teacher_kept / temperature, dim=-1)

    if k < vocab:
        student_kept, student_rest = kept_and_rest_log_probs(
            student_logits, top.indices, min_rest=0.0
        )
    else:  # the student's top-k is its whole vocab: nothing is left for its rest
        student_kept = top.values - torch.logsumexp(student_logits, dim=-1, keepdim=True)
        student_kept = F.pad(student_kept, (0, k - vocab), value=float("-inf"))
        student_rest = torch.full_like(student_kept[:, 0], float("-inf"))
    student = torch.cat([student_kept, student_rest.unsqueeze(-1)], dim=-1)
    teacher_rest = teacher_rest_log_mass(teacher, min_rest=0.0, dtype=student_logits.dtype)
    teacher_rows = torch.cat([teacher_kept, teacher_rest.unsqueeze(-1)], dim=-1)
    return temper(student, temperature).exp(), temper(teacher_rows, temperature).exp()
