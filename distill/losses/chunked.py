"""The hidden-state path: loss and gradients one token chunk at a time (Liger-Kernel style).

Why gradients in the forward pass: recomputing each chunk's logits in backward would cost a
third lm_head matmul. Here forward computes, per chunk, the logits (fp32), the row losses,
their gradient w.r.t. the logits (autograd on the chunk only, so any divergence works), and
from it the gradients for hidden / weight / bias; backward only scales them. Chunk i's hidden
gradient is computed in the same sweep over the lm_head as chunk i+1's logits, so on a CPU
without bf16 units each bf16 vocab block is upcast once for both (``lm_head``). At most two
[chunk, V] fp32 buffers are alive at once. The weight gradient buffer is allocated only when the
weight requires grad (a frozen QLoRA lm_head never pays for a [V, H] fp32 buffer).
"""

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from distill.losses.lm_head import LMHead, accumulation_dtype, matmul_dtype
from distill.losses.targets import HiddenStates

RowLoss = Callable[[Tensor, "slice | Tensor"], Tensor]


def chunked_lm_head_loss(
    student: HiddenStates,
    row_losses: Sequence[RowLoss],
    weights: Sequence[float],
    row_ids: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """(sum over rows of the weighted row losses, per-term sums [n_terms] for logging)."""
    hidden, weight, bias = student
    hidden = hidden.reshape(-1, hidden.shape[-1])
    mm_dtype = matmul_dtype(weight)  # read autocast before switching it off
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLMHeadLoss.apply(
            hidden, weight, bias, row_ids, tuple(row_losses), tuple(weights), chunk_size, mm_dtype
        )


def _chunks(row_ids: Tensor | None, n_rows: int, chunk_size: int):
    """Row selectors per chunk: slices (views) when every row counts, else index tensors."""
    n = n_rows if row_ids is None else row_ids.numel()
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        yield slice(start, stop) if row_ids is None else row_ids[start:stop]


def _loss_and_grad(logits, rows, row_losses, term_weights, need_grad):
    """(per-term sums, d(weighted total)/d(logits) or None) for one chunk."""
    logits.requires_grad_(need_grad)
    with torch.enable_grad() if need_grad else nullcontext():
        parts = torch.stack([loss(logits, rows).sum() for loss in row_losses])
        total = (parts * term_weights).sum()
    grad = torch.autograd.grad(total, logits)[0] if need_grad else None
    return parts.detach(), grad


class _Gradients:
    """Gradient buffers, allocated only for inputs that require grad."""

    def __init__(self, hidden, weight, bias, needs, acc_dtype):
        need_hidden, need_weight, need_bias = needs
        self.hidden = torch.zeros_like(hidden) if need_hidden else None
        self.weight = (torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
                       if need_weight else None)
        self.bias = (torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device)
                     if need_bias else None)

    def add(self, head, rows, chunk_hidden, grad_logits, chunk_grad_hidden):
        if self.hidden is not None:
            self.hidden[rows] = chunk_grad_hidden.to(self.hidden.dtype)
        if self.weight is not None:
            head.add_grad_weight(self.weight, grad_logits, chunk_hidden)
        if self.bias is not None:
            self.bias += grad_logits.sum(0)


class _ChunkedLMHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, row_ids, row_losses, weights, chunk_size, mm_dtype):
        needs = ctx.needs_input_grad[:3]
        acc_dtype = accumulation_dtype(torch.promote_types(hidden.dtype, weight.dtype))
        head = LMHead(weight, bias, mm_dtype, acc_dtype)
        grads = _Gradients(hidden, weight, bias, needs, acc_dtype)
        term_weights = torch.tensor(weights, dtype=acc_dtype, device=hidden.device)
        sums = torch.zeros(len(row_losses), dtype=acc_dtype, device=hidden.device)

        previous = None  # (rows, hidden, grad_logits) of the chunk whose gradients are due
        for rows in [*_chunks(row_ids, hidden.shape[0], chunk_size), None]:
            chunk_hidden = None if rows is None else hidden[rows]
            due = previous[2] if previous is not None and needs[0] else None
            logits, due_grad_hidden = head.sweep(chunk_hidden, due)
            if previous is not None:
                grads.add(head, *previous, due_grad_hidden)
                previous = due = None  # free its gradient before this chunk's scratch exists
            if rows is None:
                break
            parts, grad_logits = _loss_and_grad(logits, rows, row_losses, term_weights, any(needs))
            sums += parts
            previous = None if grad_logits is None else (rows, chunk_hidden, grad_logits)
            del logits, grad_logits  # from here only `previous` holds this chunk's gradient

        ctx.save_for_backward(grads.hidden, grads.weight, grads.bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(sums)
        return (sums * term_weights).sum(), sums

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, _grad_sums):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_total).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None
