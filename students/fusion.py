"""Fusion of the speech and audio-event streams (docs/reference.md §1).

Why LayerNorm per stream: Whisper and BEATs outputs live on very different scales; each is
normalised before they are concatenated on channels, the shorter one zero-padded in time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AudioFusion(nn.Module):
    """LayerNorm(speech) ++ LayerNorm(audio) on channels: [B, T, speech_dim + audio_dim]."""

    def __init__(self, speech_dim: int, audio_dim: int = 0):
        super().__init__()
        self.ln_speech = nn.LayerNorm(speech_dim)
        self.ln_audio = nn.LayerNorm(audio_dim) if audio_dim else None
        self.out_dim = speech_dim + audio_dim

    def forward(
        self,
        speech: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``audio_padding_mask`` [B, audio T] (True = padding) zeroes those positions after the
        LayerNorm, as the zero padding of a shorter clip alone: a clip's fused features do not
        depend on its batch-mates."""
        speech = self.ln_speech(speech.to(self.ln_speech.weight.dtype))
        if self.ln_audio is None:
            if audio is not None:
                raise ValueError("this fusion was built without an audio stream (beats disabled)")
            return speech
        if audio is None:
            raise ValueError("this fusion expects BEATs features (beats enabled)")
        audio = self.ln_audio(audio.to(self.ln_audio.weight.dtype))
        if audio_padding_mask is not None:
            audio = audio.masked_fill(audio_padding_mask.unsqueeze(-1), 0.0)
        length = max(speech.size(1), audio.size(1))
        speech = F.pad(speech, (0, 0, 0, length - speech.size(1)))
        audio = F.pad(audio, (0, 0, 0, length - audio.size(1)))
        return torch.cat([speech, audio], dim=-1)
