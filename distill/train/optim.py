"""AdamW with weight decay only where it belongs, and a learning rate per part of the student.

Decay on biases, norm weights and other 1-D parameters (gates' biases, scales) only shrinks them
toward zero for no regularising benefit; the reference system excludes them, so do we.

Why two parts: the audio path (Q-Former, fusion, projection) starts from random weights while
the LLM starts pretrained and only adapts (LoRA); one learning rate either moves the audio path
too slowly or the LLM too far. ``optimizer.audio_lr`` and ``optimizer.llm_start_step`` set them
apart (``distill.config.OptimizerConfig``); the scheduler reads each group's ``component``.
"""

from __future__ import annotations

import torch

AUDIO_PATH = ("whisper.", "beats.", "fusion.", "qformer.", "projection.")  # SalmonnStudent's
COMPONENTS = ("audio", "llm")


def component_of(name: str) -> str:
    """'audio' for a parameter of the audio path, 'llm' for everything else (LLM, LoRA)."""
    return "audio" if name.startswith(AUDIO_PATH) else "llm"


def parameter_groups(model: torch.nn.Module, weight_decay: float,
                     named: list[tuple[str, torch.nn.Parameter]] | None = None) -> list[dict]:
    """[decay group, no-decay group] of the trainable parameters (of ``named`` when given)."""
    decay, no_decay = [], []
    for name, param in named if named is not None else model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = "norm" in name.lower() or "ln_" in name.lower()
        (no_decay if param.ndim < 2 or name.endswith(".bias") or is_norm else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, opt_cfg) -> torch.optim.AdamW:
    """From a ``distill.config.OptimizerConfig``; only trainable parameters are handed over.

    Groups: (audio, llm) x (decay, no decay), empty ones left out; each carries ``component``
    and its peak ``lr`` (``audio_lr`` or ``lr``)."""
    named = list(model.named_parameters())
    peak = {"audio": opt_cfg.audio_lr or opt_cfg.lr, "llm": opt_cfg.lr}
    groups = []
    for component in COMPONENTS:
        mine = [(n, p) for n, p in named if component_of(n) == component]
        for group in parameter_groups(model, opt_cfg.weight_decay, mine):
            groups.append({**group, "component": component, "lr": peak[component]})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps)
