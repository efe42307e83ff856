"""The real models' shapes, for students built with random weights (``model.random_init``).

Why: memory, latency and step time do not depend on the weights' values, and the machines that
measure them (a CPU here, a lent GPU) have no model hub. These are the public config values of
each checkpoint; only shape-bearing fields matter to the measurements, the rest are kept so the
built module is the one ``from_pretrained`` would build. Sources:

- Whisper: ``config.json`` of https://huggingface.co/openai/whisper-large-v3-turbo and
  https://huggingface.co/openai/whisper-large-v2 (encoder: 32 layers, d_model 1280, 20 heads,
  FFN 5120, 1500 positions; 128 vs 80 mel bins; turbo has a 4-layer decoder, v2 32 layers).
- BEATs: the ``cfg`` dict stored in ``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt`` from
  https://github.com/microsoft/unilm/tree/master/beats (12 post-LN "deep norm" layers, width 768,
  FFN 3072, 12 heads, 512-dim 16x16 patch embedding, gated relative position bias, 320 buckets).
- LLaMA: ``config.json`` of https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct (16 layers,
  hidden 2048, FFN 8192, 32 heads / 8 KV heads, head 64, vocabulary 128256, tied embeddings:
  1235.8M parameters) and https://huggingface.co/meta-llama/Llama-3.2-3B-Instruct (28 layers,
  hidden 3072, FFN 8192, 24 heads / 8 KV heads, head 128, tied: 3212.7M parameters).
"""

from __future__ import annotations

import json
from pathlib import Path

from students.config import StudentConfigError

_WHISPER_COMMON = {
    "model_type": "whisper",
    "architectures": ["WhisperForConditionalGeneration"],
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_attention_heads": 20,
    "decoder_ffn_dim": 5120,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "activation_function": "gelu",
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
    "scale_embedding": False,
    "init_std": 0.02,
    "bos_token_id": 50257,
    "eos_token_id": 50257,
    "pad_token_id": 50257,
    "decoder_start_token_id": 50258,
}

_LLAMA3_COMMON = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": True,
    "vocab_size": 128256,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "pretraining_tp": 1,
    "use_cache": True,
}

# Hub names (as recipes write them) -> transformers config.json values.
HF_CONFIGS: dict[str, dict] = {
    "openai/whisper-large-v3-turbo": {
        **_WHISPER_COMMON, "num_mel_bins": 128, "decoder_layers": 4, "vocab_size": 51866,
    },
    "openai/whisper-large-v2": {
        **_WHISPER_COMMON, "num_mel_bins": 80, "decoder_layers": 32, "vocab_size": 51865,
    },
    "meta-llama/Llama-3.2-1B-Instruct": {
        **_LLAMA3_COMMON, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    },
    "meta-llama/Llama-3.2-3B-Instruct": {
        **_LLAMA3_COMMON, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
    },
}

# BEATs checkpoint file names -> the official ``cfg`` dict stored in them.
BEATS_CONFIGS: dict[str, dict] = {
    "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt": {
        "input_patch_size": 16, "embed_dim": 512, "conv_bias": False,
        "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
        "encoder_attention_heads": 12, "activation_fn": "gelu",
        "layer_wise_gradient_decay_ratio": 0.6, "layer_norm_first": False, "deep_norm": True,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05, "dropout_input": 0.0, "conv_pos": 128, "conv_pos_groups": 16,
        "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800,
        "gru_rel_pos": True, "finetuned_model": True, "predictor_dropout": 0.0,
        "predictor_class": 527,
    },
}


class UnknownShapeError(StudentConfigError):
    """Random weights were asked for a model whose shape we do not know; names the key (a
    StudentConfigError, a DistillError, so every command reports it in one line)."""


def hf_config(name_or_path: str, key: str):
    """A transformers config for ``name_or_path``: a known hub name's public values, or the
    ``config.json`` of a local folder (any other model)."""
    from transformers import AutoConfig

    if name_or_path in HF_CONFIGS:
        values = dict(HF_CONFIGS[name_or_path])
        return AutoConfig.for_model(values.pop("model_type"), **values)
    if (Path(name_or_path) / "config.json").is_file():
        return AutoConfig.from_pretrained(name_or_path)
    raise UnknownShapeError(
        f"{key}: model.random_init needs the model's shape: {name_or_path!r} is neither a "
        f"folder with config.json nor one of {sorted(HF_CONFIGS)}"
    )


def beats_config(checkpoint: str, key: str = "model.beats.checkpoint") -> dict:
    """The BEATs ``cfg`` for a checkpoint: a known file name's, a JSON file's, or the ``cfg``
    stored in an existing checkpoint."""
    path = Path(checkpoint)
    if path.name in BEATS_CONFIGS:
        return dict(BEATS_CONFIGS[path.name])
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    if path.is_file():
        import torch

        return dict(torch.load(path, map_location="cpu", weights_only=True)["cfg"])
    raise UnknownShapeError(
        f"{key}: model.random_init needs BEATs' shape: {checkpoint!r} is neither an existing "
        f"checkpoint or JSON cfg nor one of {sorted(BEATS_CONFIGS)}"
    )
