"""Run row losses over the target rows on either student path and reduce them.

Why one place: masking (ignore_index), the logits-vs-hidden dispatch and the num_items
reduction are identical for every loss, and gradient accumulation is only exact if they are.

Reduction: sum over target rows / num_items. num_items defaults to this call's target count
(a plain mean). For gradient accumulation pass the full batch's target count to every
micro-batch: the sum of the micro-batch losses (and gradients) then equals the full batch's.
num_items may also be a mapping {term name: count}: each term is then divided by its own count
(the trainer divides KD by the tokens that have a teacher row, CE by all target tokens).
"""

from collections.abc import Mapping

import torch
from torch import Tensor

from distill.losses.chunked import RowLoss, chunked_lm_head_loss
from distill.losses.lm_head import accumulation_dtype
from distill.losses.targets import HiddenStates, Student, student_shape, target_rows

# The library's and the recipe's (loss.chunk_size) one default. 256 rows x 128k vocab = 131 MB
# per fp32 buffer, two alive at once: ~0.05x the naive peak at 4096 tokens (BENCHMARKS.md).
# Larger chunks amortise the per-chunk work better where memory allows (recipes for GPUs set
# 1024); on the 2-core CPU, 1024 tokens took 19.5-39 s with chunks of 256 and 25-28 s with one
# chunk of 1024 (benchmarks/bench_kd_peers.py --tokens 1024 --only distill-topk-fkl, loaded
# machine): no gain worth 4x the memory there.
DEFAULT_CHUNK_SIZE = 256


def reduce_row_losses(
    student: Student,
    terms: Mapping[str, tuple[RowLoss, float]],
    labels: Tensor | None,
    *,
    ignore_index: int,
    num_items: float | Tensor | Mapping[str, float] | None,
    chunk_size: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(weighted total, {name: unweighted detached value}), both divided by num_items
    (one count for every term, or a {term name: count} mapping).

    labels must already be flattened to one per student row (see targets.check_labels).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}")
    n_rows, _ = student_shape(student)
    row_ids, n_valid = target_rows(labels, ignore_index)
    n_valid = n_rows if n_valid is None else n_valid
    row_losses = [loss for loss, _ in terms.values()]
    if isinstance(num_items, Mapping):
        missing = sorted(set(terms) - set(num_items))
        if missing:
            raise ValueError(f"num_items: no count for term(s) {', '.join(missing)}")
        # Per-term counts: folded into the weights, so the one pass yields the right gradient.
        denominators = [float(_denominator(num_items[name], n_valid)) for name in terms]
        weights = [float(w) / d for (_, w), d in zip(terms.values(), denominators, strict=True)]
        total, sums = _run(student, row_losses, weights, row_ids, chunk_size)
        parts = {name: value / d
                 for name, value, d in zip(terms, sums.unbind(0), denominators, strict=True)}
        return total, parts
    weights = [float(weight) for _, weight in terms.values()]
    total, sums = _run(student, row_losses, weights, row_ids, chunk_size)
    denominator = _denominator(num_items, n_valid)
    parts = {name: value / denominator for name, value in zip(terms, sums.unbind(0), strict=True)}
    return total / denominator, parts


def _run(student, row_losses, weights, row_ids, chunk_size) -> tuple[Tensor, Tensor]:
    if isinstance(student, HiddenStates):
        return chunked_lm_head_loss(student, row_losses, weights, row_ids, chunk_size)
    return _logits_loss(student, row_losses, weights, row_ids)


def _logits_loss(logits, row_losses, weights, row_ids) -> tuple[Tensor, Tensor]:
    logits = logits.reshape(-1, logits.shape[-1])
    rows = slice(None) if row_ids is None else row_ids
    rows_logits = logits[rows].to(accumulation_dtype(logits.dtype))
    with torch.autocast(rows_logits.device.type, enabled=False):
        sums = torch.stack([loss(rows_logits, rows).sum() for loss in row_losses])
    total = (sums * torch.tensor(weights, dtype=sums.dtype, device=sums.device)).sum()
    return total, sums.detach()


def _denominator(num_items: float | Tensor | None, n_valid: int) -> float | Tensor:
    if num_items is None:
        return max(n_valid, 1)  # no target rows: loss 0, not NaN
    if isinstance(num_items, Tensor):
        return num_items
    if not num_items > 0:
        raise ValueError(f"num_items: expected a positive token count, got {num_items}")
    return num_items
