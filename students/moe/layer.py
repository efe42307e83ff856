"""The MoE FFN: route each token to its top-k experts and combine their weighted outputs.

Why the balance loss is kept on the layer: the layer sits inside a transformers decoder layer
that only passes hidden states on, so the model collects each layer's loss after the forward
(``moe_balance_loss``) and hands the sum to the trainer.
"""

from __future__ import annotations

import torch
from torch import nn

from students.moe.experts import Experts
from students.moe.gate import TopKNoisyGate


class MoELayer(nn.Module):
    """Drop-in replacement of a LLaMA MLP; outputs are scaled by ``score_scale`` (E/k default)."""

    def __init__(
        self,
        gate: TopKNoisyGate,
        experts: Experts,
        neuron_index: torch.Tensor,
        score_scale: float | None = None,
    ):
        super().__init__()
        self.gate = gate
        self.experts = experts
        num_experts = len(experts)
        self.score_scale = score_scale if score_scale is not None else num_experts / gate.top_k
        # Which dense neurons each expert holds: checked on load, so a checkpoint's gates are
        # never paired with a different split.
        self.register_buffer("neuron_index", neuron_index.clone(), persistent=True)
        self.register_buffer(
            "expert_load", torch.zeros(num_experts, dtype=torch.float64), persistent=False
        )
        self.balance_loss: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        routing = self.gate(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tokens, slot = torch.where(routing.indices == e)
            if tokens.numel() == 0:
                continue
            y = expert(x[tokens])
            weight = routing.scores[tokens, slot].to(y.dtype) * self.score_scale
            out.index_add_(0, tokens, y * weight.unsqueeze(-1))
        self.balance_loss = routing.balance_loss
        with torch.no_grad():
            self.expert_load += routing.counts.to(self.expert_load.dtype)
        return out.view(shape)


def moe_layers(model: nn.Module) -> list[MoELayer]:
    return [m for m in model.modules() if isinstance(m, MoELayer)]


def moe_balance_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum over layers of the last forward's weighted balance losses (None without MoE)."""
    losses = [layer.balance_loss for layer in moe_layers(model) if layer.balance_loss is not None]
    return torch.stack([loss.float() for loss in losses]).sum() if losses else None


def load_statistics(model: nn.Module) -> torch.Tensor:
    """[layers, experts] tokens routed to each expert since the last reset."""
    layers = moe_layers(model)
    if not layers:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.stack([layer.expert_load.detach().cpu() for layer in layers])


def reset_load_statistics(model: nn.Module) -> None:
    for layer in moe_layers(model):
        layer.expert_load.zero_()
