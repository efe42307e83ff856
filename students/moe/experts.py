"""Experts: slices of one dense LLaMA FFN, each a small gated MLP.

Why ``nn.Linear`` per projection (not LLaMA-MoE's stacked parameters): bitsandbytes 4-bit and
peft LoRA then apply to experts exactly as to the dense model (same ``gate_proj``/``up_proj``/
``down_proj`` names).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class Expert(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)) over its share of the intermediate neurons."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", **factory):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False, **factory)
        self.act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    @classmethod
    def from_dense(cls, mlp: nn.Module, neurons: torch.Tensor, act: str) -> Expert:
        """Rows ``neurons`` of gate/up_proj and the same columns of down_proj."""
        weight = mlp.gate_proj.weight
        expert = cls(weight.size(1), neurons.numel(), act, dtype=weight.dtype, device=weight.device)
        neurons = neurons.to(weight.device)
        with torch.no_grad():
            expert.gate_proj.weight.copy_(mlp.gate_proj.weight[neurons])
            expert.up_proj.weight.copy_(mlp.up_proj.weight[neurons])
            expert.down_proj.weight.copy_(mlp.down_proj.weight[:, neurons])
        return expert


class Experts(nn.ModuleList):
    """The E experts of one layer, index e is expert e."""
