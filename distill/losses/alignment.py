"""Put teacher and student on the same categories, at temperature T, as log-probabilities.

Why: every divergence is then one formula over aligned rows, whatever the teacher looked like.

- dense teacher [N, V]: softmax(logits / T) on both sides, V categories.
- top-k teacher, tail "renorm": only the k kept ids; both sides renormalised over them.
  For cached log-probs, p^(1/T) renormalised equals softmax(logprobs / T), so T acts as usual.
- top-k teacher, tail "bucket": k kept ids plus one "rest" category (teacher 1 - sum p,
  student: the mass of every other id). T tempers the k+1 coarse categories on both sides:
  c^(1/T) renormalised. This is exact at T=1 and keeps "equal inputs give zero loss" at any T.
  The teacher's rest is TopKTargets.rest when given (the cache stores it from the unrounded
  log-probs), else 1 - sum p, which rounding in cached log-probs can push to 0 while the true
  rest is several percent: at T > 1 a small rest is amplified (r^(1/T)), so a student equal
  to the teacher would pay for the rounding. The rest mass is floored at MIN_REST_MASS on both
  sides so neither KL direction can be infinite when one side's kept ids hold all the mass.
  When k equals the vocab there is no rest, and bucket equals dense.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from distill.losses.targets import Teacher, TopKTargets

TAIL_MODES = ("renorm", "bucket")
MIN_REST_MASS = 1e-8


def aligned_log_probs(
    student_logits: Tensor, teacher: Teacher, *, temperature: float, tail: str
) -> tuple[Tensor, Tensor]:
    """(student, teacher) log-probs [n, C] over the same C categories."""
    if not isinstance(teacher, TopKTargets):
        teacher_logits = teacher.detach().to(student_logits.dtype)
        return (
            F.log_softmax(student_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
        )
    ids = teacher.ids.long()
    teacher_kept = teacher.logprobs.detach().to(student_logits.dtype)
    if tail == "renorm" or ids.shape[-1] == student_logits.shape[-1]:
        student_kept = student_logits.gather(-1, ids)
        return (
            F.log_softmax(student_kept / temperature, dim=-1),
            F.log_softmax(teacher_kept / temperature, dim=-1),
        )
    student_kept, student_rest = kept_and_rest_log_probs(student_logits, ids)
    student = torch.cat([student_kept, student_rest.unsqueeze(-1)], dim=-1)
    teacher_rows = torch.cat([teacher_kept, teacher_rest_log_mass(teacher, dtype=student_logits.dtype).unsqueeze(-1)], dim=-1)
    return temper(student, temperature), temper(teacher_rows, temperature)


def temper(log_probs: Tensor, temperature: float) -> Tensor:
    """p^(1/T) renormalised, in log space."""
    return F.log_softmax(log_probs / temperature, dim=-1)


def teacher_rest_log_mass(
    teacher: TopKTargets, min_rest: float = MIN_REST_MASS, dtype: torch.dtype | None = None
) -> Tensor:
    """log of the teacher's mass outside its top-k [n]: the stored rest, else 1 - sum p."""
    kept = teacher.logprobs.detach().to(dtype or teacher.logprobs.dtype)
    if teacher.rest is None:
        return rest_log_mass(kept, min_rest)
    rest = teacher.rest.detach().to(kept.dtype)
    return rest.clamp(min=math.log(min_rest)) if min_rest > 0 else rest


def rest_log_mass(kept_log_probs: Tensor, min_rest: float = MIN_REST_MASS) -> Tensor:
    """log(1 - sum(exp(kept))), floored at min_rest (for cached teacher log-probs)."""
    rest = -torch.expm1(torch.logsumexp(kept_log_probs, dim=-1))
    return torch.log(rest.clamp(min=min_rest))


def kept_and_rest_log_probs(
    logits: Tensor, ids: Tensor, min_rest: float = MIN_REST_MASS
) -> tuple[Tensor, Tensor]:
    """Student log-probs of `ids` [n, k] and the log-mass of all other ids [n], floored.

    The rest is summed directly over the other ids rather than taken as 1 - sum q, which
    loses all precision once the kept ids hold nearly all the mass.
    """
    log_floor = math.log(min_rest) if min_rest > 0 else float("-inf")
    return _KeptAndRest.apply(logits, ids, log_floor)


def _shifted_exp(logits: Tensor, peak: Tensor, ids: Tensor | None = None) -> Tensor:
    """exp(logits - peak) in one new buffer, with `ids` zeroed if given."""
    scratch = (logits.detach() - peak.unsqueeze(-1)).exp_()
    return scratch if ids is None else scratch.scatter_(-1, ids, 0.0)


class _KeptAndRest(torch.autograd.Function):
    """Hand-written so a [n, V] chunk costs one scratch buffer, reused as the gradient.

    Forward fills scratch = exp(x - max) once; the normaliser sums all of it, the rest sums
    it with the kept ids zeroed (a direct sum, so no 1 - sum q cancellation; a rest below
    exp(-87) relative to the max underflows to 0 and hits the floor). The first backward
    turns that scratch into the gradient in place; a repeated backward (retain_graph,
    gradcheck) recomputes it.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, log_floor: float) -> tuple[Tensor, Tensor]:
        peak = logits.detach().amax(dim=-1)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        scratch = _shifted_exp(logits, peak)
        log_z = scratch.sum(-1).log() + peak
        scratch.scatter_(-1, ids, 0.0)
        rest = (scratch.sum(-1).log() + peak - log_z).clamp(min=log_floor)
        kept = logits.gather(-1, ids) - log_z.unsqueeze(-1)
        ctx.save_for_backward(logits, ids, peak, log_z, kept, rest)
        ctx.scratch = scratch  # an intermediate, so kept on ctx and dropped after backward
        ctx.log_floor = log_floor
        return kept, rest

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kept: Tensor, grad_rest: Tensor) -> tuple[Tensor, None, None]:
        logits, ids, peak, log_z, kept, rest = ctx.saved_tensors
        scratch, ctx.scratch = ctx.scratch, None
        if scratch is None:  # a repeated backward
            scratch = _shifted_exp(logits, peak, ids)
        floored = rest <= ctx.log_floor  # the floor (or an empty rest) has no gradient
        grad_rest = torch.where(floored, torch.zeros_like(grad_rest), grad_rest)
        outflow = grad_kept.sum(-1) + grad_rest  # d/dlog_z, through every output
        # Outside the kept ids: softmax_j * (grad_rest / q_rest - outflow), where
        # softmax_j = scratch_j * exp(max - log_z).
        inverse_rest = torch.where(floored, torch.zeros_like(rest), torch.exp(-rest))
        outside = (grad_rest * inverse_rest - outflow) * torch.exp(peak - log_z)
        grad = scratch.mul_(outside.unsqueeze(-1))
        inside = grad_kept - kept.exp() * outflow.unsqueeze(-1)
        return grad.scatter_(-1, ids, inside), None, None
