"""The LLaMA-MoE gate: an MLP router with trainable noise, top-k routing and a balance loss.

Why noise and the smooth load: Shazeer et al.'s noisy top-k gate gives the load term a gradient
(the probability each expert stays in the top k under the noise) so the balance loss can teach
the router; with W_noise = 0 at init the noise starts at a fixed scale softplus(0) + 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.normal import Normal


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation (unbiased variance / mean^2): 0 for a uniform vector."""
    if x.numel() <= 1:
        return x.new_zeros((), dtype=torch.float32)
    x = x.float()
    return x.var() / (x.mean() ** 2 + eps)


@dataclass
class Routing:
    indices: torch.Tensor  # [N, k] expert ids
    scores: torch.Tensor  # [N, k] softmax over the top-k logits (fp32)
    importance: torch.Tensor  # [E] summed scores
    load: torch.Tensor  # [E] tokens per expert (smooth estimate in noisy training)
    counts: torch.Tensor  # [E] hard token counts
    balance_loss: torch.Tensor  # scalar, already weighted


class TopKNoisyGate(nn.Module):
    """Linear(h->E, no bias) -> Tanh -> Linear(E->E); noise softplus(W_noise x) + eps in training."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        *,
        noise: bool = True,
        noise_epsilon: float = 0.01,
        balance_weight: float = 0.01,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k ({top_k}) must be in [1, num_experts ({num_experts})]")
        self.num_experts, self.top_k = num_experts, top_k
        self.noise, self.noise_epsilon = noise, noise_epsilon
        self.balance_weight = balance_weight
        self.gate_network = nn.Sequential(
            nn.Linear(hidden_size, num_experts, bias=False),
            nn.Tanh(),
            nn.Linear(num_experts, num_experts, bias=False),
        )
        self.weight_noise = nn.Linear(hidden_size, num_experts, bias=False)
        nn.init.zeros_(self.weight_noise.weight)

    def forward(self, x: torch.Tensor) -> Routing:
        x = x.to(self.weight_noise.weight.dtype)
        clean = self.gate_network(x)
        noisy = self.training and self.noise
        if noisy:
            noise_std = F.softplus(self.weight_noise(x)) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top_logits, top_indices = logits.topk(min(self.top_k + 1, self.num_experts), dim=-1)
        indices = top_indices[:, : self.top_k]
        scores = torch.softmax(top_logits[:, : self.top_k].float(), dim=-1)
        dense = torch.zeros_like(logits, dtype=scores.dtype).scatter(1, indices, scores)
        importance = dense.sum(0)
        counts = (dense > 0).sum(0).float()
        if noisy and self.top_k < self.num_experts:
            load = self._smooth_load(clean, logits, top_logits, noise_std)
        else:
            load = counts
        balance = self.balance_weight * (cv_squared(importance) + cv_squared(load))
        return Routing(indices, scores, importance, load, counts.detach(), balance)

    def _smooth_load(self, clean, noisy, top_logits, noise_std) -> torch.Tensor:
        """Sum over tokens of P(expert in top-k) under fresh noise (Shazeer et al., 2017).

        LLaMA-MoE compares the noise alone to the threshold here; the paper (and we) compare the
        noisy logits."""
        threshold_in = top_logits[:, self.top_k : self.top_k + 1]
        threshold_out = top_logits[:, self.top_k - 1 : self.top_k]
        normal = Normal(0.0, 1.0)
        prob_in = normal.cdf((clean - threshold_in) / noise_std)
        prob_out = normal.cdf((clean - threshold_out) / noise_std)
        return torch.where(noisy > threshold_in, prob_in, prob_out).sum(0)
