"""Dense LLaMA FFN -> MoE by splitting its intermediate neurons into E equal groups.

Why splits are reproducible from the config: the experts are frozen (4-bit) copies of the dense
weights, so a checkpoint stores only the gates and LoRA; ``from_pretrained`` re-derives the same
split from the base model, the split method and the seed (and the stored index is compared).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from students.config import MoEConfig
from students.moe.experts import Expert, Experts
from students.moe.gate import TopKNoisyGate
from students.moe.layer import MoELayer


def split_neurons(
    gate_weight: torch.Tensor, num_experts: int, method: str = "random", seed: int = 0
) -> torch.Tensor:
    """[E, I/E] neuron indices (sorted within each expert) covering every neuron once."""
    intermediate = gate_weight.size(0)
    if intermediate % num_experts:
        raise ValueError(
            f"intermediate size {intermediate} is not divisible by {num_experts} experts"
        )
    generator = torch.Generator().manual_seed(seed)
    if method == "random":
        groups = torch.randperm(intermediate, generator=generator).view(num_experts, -1)
    elif method == "clustered":
        labels = balanced_kmeans(gate_weight.detach().float().cpu(), num_experts, generator)
        groups = torch.stack([torch.nonzero(labels == c).squeeze(1) for c in range(num_experts)])
    else:
        raise ValueError(f"unknown split method {method!r} (random or clustered)")
    return groups.sort(dim=1).values


def balanced_kmeans(
    points: torch.Tensor, clusters: int, generator: torch.Generator, iterations: int = 30
) -> torch.Tensor:
    """k-means whose clusters all hold len(points) / clusters points (neurons with similar
    gate_proj rows fire together, so grouping them keeps each expert coherent)."""
    size = points.size(0) // clusters
    centers = points[torch.randperm(points.size(0), generator=generator)[:clusters]].clone()
    labels = torch.full((points.size(0),), -1, dtype=torch.long)
    for _ in range(iterations):
        new_labels = _balanced_assign(torch.cdist(points, centers).numpy(), size)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        centers = torch.stack([points[labels == c].mean(0) for c in range(clusters)])
    return labels


def _balanced_assign(distance: np.ndarray, capacity: int) -> torch.Tensor:
    """Points that lose most by not getting their nearest centre choose first."""
    points, clusters = distance.shape
    ordered = np.sort(distance, axis=1)
    regret = ordered[:, -1] - ordered[:, 0] if clusters > 1 else np.zeros(points)
    free = np.full(clusters, capacity)
    labels = np.empty(points, dtype=np.int64)
    for i in np.argsort(-regret, kind="stable"):
        row = np.where(free > 0, distance[i], np.inf)
        c = int(np.argmin(row))
        labels[i] = c
        free[c] -= 1
    return torch.from_numpy(labels)


def mlp_to_moe(
    mlp: nn.Module, cfg: MoEConfig, act: str, seed: int, score_scale: float | None = None
) -> MoELayer:
    """One LLaMA MLP (gate_proj, up_proj, down_proj) as an MoE layer with a fresh gate."""
    index = split_neurons(mlp.gate_proj.weight, cfg.num_experts, cfg.split, seed)
    experts = Experts(Expert.from_dense(mlp, neurons, act) for neurons in index)
    gate = TopKNoisyGate(
        mlp.gate_proj.weight.size(1),
        cfg.num_experts,
        cfg.top_k,
        noise=cfg.gate_noise,
        balance_weight=cfg.balance_weight,
    ).to(mlp.gate_proj.weight.device)
    return MoELayer(gate, experts, index, score_scale)


def convert_to_moe(model: nn.Module, cfg: MoEConfig) -> nn.Module:
    """Replace the ``mlp`` of every decoder layer of a LLaMA-style causal LM, in place.

    Layer i's split uses seed ``cfg.split_seed + i`` (different layers, reproducible)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    act = getattr(model.config, "hidden_act", "silu")
    for i, layer in enumerate(decoder.layers):
        mlp = layer.mlp
        for name in ("gate_proj", "up_proj", "down_proj"):
            if type(getattr(mlp, name, None)) is not nn.Linear:
                raise TypeError(
                    f"layer {i}: MoE conversion needs a full-precision LLaMA MLP "
                    f"(nn.Linear {name}); load the LLM unquantised, convert, then quantise"
                )
        layer.mlp = mlp_to_moe(mlp, cfg, act, cfg.split_seed + i, cfg.score_scale)
    return model


def is_gate_module(name: str) -> bool:
    """Names of MoE router linears, kept in full precision when the rest is quantised."""
    parts = name.split(".")
    return "gate_network" in parts or "weight_noise" in parts
