"""Learning-rate schedule of the reference system: linear warm-up from a small lr, then cosine.

docs/reference.md §1: warm-up 3000 steps from 1e-6 to 3e-5, then cosine from 3e-5 down to 1e-5.
A plain function of the step (no hidden state) so a resumed run gets exactly the same lr.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, *, lr: float, min_lr: float, warmup_start_lr: float, warmup_steps: int,
          total_steps: int, kind: str = "cosine") -> float:
    if warmup_steps and step < warmup_steps:
        return warmup_start_lr + (lr - warmup_start_lr) * step / warmup_steps
    if kind == "constant":
        return lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "linear":
        return lr + (min_lr - lr) * progress
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg, total_steps: int):
    """A LambdaLR whose factor is ``lr_at(step) / lr``: every group has the schedule's shape,
    scaled by its own peak lr (``distill.train.optim``). An ``llm`` group with
    ``optimizer.llm_start_step`` = s stays at 0 before s and runs the whole schedule (warm-up,
    then decay to the floor at ``total_steps``) from s on."""
    opt, sched = train_cfg.optimizer, train_cfg.schedule
    start = opt.llm_start_step
    if start and start >= total_steps:
        raise ValueError(f"train.optimizer.llm_start_step ({start}) must be below the run's "
                         f"{total_steps} steps, or the LLM would never train")

    def factor(step: int, first: int = 0) -> float:
        if step < first:
            return 0.0
        return lr_at(step - first, lr=opt.lr, min_lr=opt.min_lr,
                     warmup_start_lr=opt.warmup_start_lr, warmup_steps=sched.warmup_steps,
                     total_steps=total_steps - first, kind=sched.kind) / opt.lr

    def llm_factor(step: int) -> float:
        return factor(step, start)

    lambdas = [llm_factor if group.get("component") == "llm" and start else factor
               for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
