"""The window Q-Former's init follows ``qformer.initializer_range`` (BERT's 0.02 by default)."""

import pytest
import torch
from torch import nn

from students.config import QFormerConfig
from students.qformer import WindowQFormer


@pytest.mark.parametrize("std", [0.02, 0.125])
def test_every_weight_is_drawn_with_the_configured_std(std):
    torch.manual_seed(0)
    cfg = QFormerConfig(hidden_size=64, num_attention_heads=8, num_layers=1,
                        intermediate_size=128, initializer_range=std)
    qformer = WindowQFormer(cfg, encoder_width=384)
    weights = torch.cat([m.weight.flatten() for m in qformer.modules()
                         if isinstance(m, nn.Linear)] + [qformer.query_tokens.flatten()])
    assert weights.numel() > 50_000
    assert weights.std().item() == pytest.approx(std, rel=0.02)
    assert weights.mean().item() == pytest.approx(0.0, abs=std * 0.02)
    assert QFormerConfig().initializer_range == 0.02  # SALMONN's and BERT's
