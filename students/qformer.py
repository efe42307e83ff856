"""Window-level Q-Former: a fixed number of audio tokens per clip (docs/reference.md §1).

Why windows: one query per 17-frame window (0.34 s) gives exactly 88 tokens for the 1500 frames of
a 30 s Whisper input, whatever the clip's length; the LLM sequence length is thus fixed. Built on
transformers' ``Blip2QFormerModel`` (BERT layers, no word/position embeddings, no text FFN, cross
attention to the window in every layer by default).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from students.config import QFormerConfig


def num_windows(frames: int, window: int, stride: int) -> int:
    """Windows that fit entirely in ``frames`` (the frames after the last one are dropped)."""
    return 0 if frames < window else (frames - window) // stride + 1


class WindowQFormer(nn.Module):
    """[B, T, encoder_width] -> [B, windows * queries, hidden]."""

    def __init__(self, cfg: QFormerConfig, encoder_width: int):
        super().__init__()
        self.window, self.stride = cfg.window_frames, cfg.window_stride
        self.queries = cfg.queries_per_window
        config = Blip2QFormerConfig(
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            cross_attention_frequency=cfg.cross_attention_frequency,
            encoder_hidden_size=encoder_width,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            use_qformer_text_input=False,
            initializer_range=cfg.initializer_range,
        )
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.queries_per_window, cfg.hidden_size))
        nn.init.normal_(self.query_tokens, std=config.initializer_range)

    @property
    def hidden_size(self) -> int:
        return self.query_tokens.size(-1)

    def tokens_for(self, frames: int) -> int:
        return num_windows(frames, self.window, self.stride) * self.queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, frames, width = features.shape
        count = num_windows(frames, self.window, self.stride)
        if count == 0:
            raise ValueError(f"{frames} encoder frames are fewer than one window ({self.window})")
        # [B, T, C] -> [B, L, C, window] -> [B * L, window, C]
        windows = features.unfold(1, self.window, self.stride)
        windows = windows.permute(0, 1, 3, 2).reshape(batch * count, self.window, width)
        queries = self.query_tokens.expand(batch * count, -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=windows).last_hidden_state
        return out.reshape(batch, count * self.queries, -1)
