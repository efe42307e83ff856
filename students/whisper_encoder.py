"""The Whisper speech encoder and its features (docs/reference.md §1).

Why only the encoder class: loading the whole ``WhisperModel`` would also materialise the decoder
we never use. ``WhisperEncoder.from_pretrained`` with a key mapping reads just the encoder weights
from a full Whisper checkpoint (hub name or local folder), in the compute dtype: upstream keeps
this encoder in fp32 under autocast, a large share of its memory.
"""

from __future__ import annotations

import torch
from transformers import WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from students.config import SAMPLE_RATE, WhisperEncoderConfig
from students.ct2_whisper import cached_conversion, is_ct2_folder


class _EncoderOnly(WhisperEncoder):
    # The decoder and output projection of a full checkpoint are expected leftovers, not errors.
    _keys_to_ignore_on_load_unexpected = [r"decoder\.", r"proj_out\."]


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


def encoder_frames(extractor: WhisperFeatureExtractor) -> int:
    """Frames the encoder outputs for one padded clip: 3000 mel frames / conv stride 2 = 1500."""
    return extractor.nb_max_frames // 2
