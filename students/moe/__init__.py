"""LLaMA-MoE: dense FFNs split into experts by intermediate neurons, with a noisy top-k gate.

Layout after LLaMA-MoE: ``gate`` (routing and balance loss), ``experts`` (the split FFN),
``layer`` (dispatch and combine), ``convert`` (dense -> MoE).
"""

from students.moe.convert import convert_to_moe, split_neurons
from students.moe.gate import TopKNoisyGate, cv_squared
from students.moe.layer import (
    MoELayer,
    load_statistics,
    moe_balance_loss,
    moe_layers,
    reset_load_statistics,
)

__all__ = [
    "MoELayer",
    "TopKNoisyGate",
    "convert_to_moe",
    "cv_squared",
    "load_statistics",
    "moe_balance_loss",
    "moe_layers",
    "reset_load_statistics",
    "split_neurons",
]
