"""AdamW with weight decay only where it belongs.

Decay on biases, norm weights and other 1-D parameters (gates' biases, scales) only shrinks them
toward zero for no regularising benefit; the reference system excludes them, so do we.
"""

from __future__ import annotations

import torch


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = "norm" in name.lower() or "ln_" in name.lower()
        (no_decay if param.ndim < 2 or name.endswith(".bias") or is_norm else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, opt_cfg) -> torch.optim.AdamW:
    """From a ``distill.config.OptimizerConfig``; only trainable parameters are handed over."""
    groups = parameter_groups(model, opt_cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps)
