"""The Whisper speech encoder and its features (docs/reference.md §1).

Why only the encoder class: loading the whole ``WhisperModel`` would also materialise the decoder
we never use. ``WhisperEncoder.from_pretrained`` with a key mapping reads just the encoder weights
from a full Whisper checkpoint (hub name or local folder), in the compute dtype: upstream keeps
this encoder in fp32 under autocast, a large share of its memory.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import WhisperFeatureExtractor
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from students.config import SAMPLE_RATE, WhisperEncoderConfig
from students.ct2_whisper import cached_conversion, is_ct2_folder


class _EncoderOnly(WhisperEncoder):
    # The decoder and output projection of a full checkpoint are expected leftovers, not errors.
    _keys_to_ignore_on_load_unexpected = [r"decoder\.", r"proj_out\."]

    def forward(self, input_features: torch.Tensor, attention_mask=None, **kwargs):
        """[B, mels, F] -> last_hidden_state [B, F / 2, width]. F = 3000 (30 s) runs
        transformers' own forward; a shorter even F runs the same layers with the first F / 2
        positional embeddings (``model.whisper.pad_to_30s: false``), which transformers refuses."""
        if input_features.shape[-1] == full_input_frames(self):
            return super().forward(input_features, attention_mask, **kwargs)
        return encode_any_length(self, input_features)


def full_input_frames(encoder: WhisperEncoder) -> int:
    """Mel frames of the 30 s input: 1500 positions x the two convolutions' strides (1, 2)."""
    return encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]


def encode_any_length(encoder: WhisperEncoder, features: torch.Tensor) -> BaseModelOutput:
    """Whisper's encoder forward on ``features`` [B, mels, F] for any even F up to 30 s.

    The steps of transformers' ``WhisperEncoder.forward`` (two GELU convolutions, sinusoidal
    positions, the layers, the final norm) with positions ``0 .. F / 2 - 1``; at F = 3000 the
    result is that forward's (tests/students/test_whisper_input.py). Variable-length Whisper
    features are what SLAM-LLM's speech encoders use for short clips. ValueError for an odd F
    or one beyond 30 s."""
    frames, full = features.shape[-1], full_input_frames(encoder)
    if frames > full or frames % 2:
        raise ValueError(f"Whisper takes an even number of mel frames up to {full}, got {frames}")
    hidden = nn.functional.gelu(encoder.conv1(features))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop:
            continue
        hidden = layer(hidden, None)
    return BaseModelOutput(last_hidden_state=encoder.layer_norm(hidden))


def load_whisper_encoder(
    cfg: WhisperEncoderConfig,
    dtype: torch.dtype,
    *,
    attn_implementation: str = "sdpa",
    random_init: bool = False,
) -> WhisperEncoder:
    """Encoder of the Whisper checkpoint ``cfg.name_or_path``; frozen (eval) when ``cfg.freeze``.

    ``random_init``: the same encoder with random weights, from the checkpoint's config (a known
    hub name's public values or a local folder's config.json; ``students.shapes``). A CTranslate2
    (faster-whisper) folder is converted once into the model cache and loaded from there
    (``students.ct2_whisper``)."""
    dtype = torch.float32 if cfg.dtype == "float32" else dtype
    source = cfg.name_or_path
    if is_ct2_folder(source):
        source = str(cached_conversion(source))
    if random_init:
        from students.shapes import hf_config

        config = hf_config(source, "model.whisper.name_or_path")
        config._attn_implementation = attn_implementation
        encoder, info = _EncoderOnly(config).to(dtype), {"missing_keys": []}
    else:
        encoder, info = _EncoderOnly.from_pretrained(
            source,
            key_mapping={r"^(model\.)?encoder\.": ""},
            dtype=dtype,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    if info["missing_keys"]:
        raise ValueError(
            f"{cfg.name_or_path}: not a Whisper checkpoint with an encoder "
            f"(missing {sorted(info['missing_keys'])[:8]})"
        )
    if encoder.config.num_mel_bins != cfg.num_mel_bins:
        raise ValueError(
            f"{cfg.name_or_path}: the encoder takes {encoder.config.num_mel_bins} mel bins but "
            f"model.whisper.num_mel_bins is {cfg.num_mel_bins}"
        )
    if cfg.freeze:
        encoder.requires_grad_(False)
        encoder.eval()
    return encoder


def whisper_feature_extractor(num_mel_bins: int) -> WhisperFeatureExtractor:
    """Log-mel features padded/cut to 30 s (3000 frames), as every Whisper checkpoint expects.

    Built from its defaults (identical for all Whisper sizes but the mel count), so no model
    hub is needed to make features."""
    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLE_RATE)


def mel_frames_for(windows: int, window_frames: int, window_stride: int, limit: int) -> int:
    """Mel frames that give ``windows`` whole Q-Former windows of encoder frames: the last
    window ends at encoder frame (windows - 1) * stride + window, two mel frames each (conv
    stride 2); at most ``limit`` (3000, the 30 s input)."""
    return min(2 * ((windows - 1) * window_stride + window_frames), limit)


def encoder_frames(extractor: WhisperFeatureExtractor) -> int:
    """Frames the encoder outputs for one padded clip: 3000 mel frames / conv stride 2 = 1500."""
    return extractor.nb_max_frames // 2
