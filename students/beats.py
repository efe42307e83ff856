"""BEATs audio-event encoder, written to load the official checkpoints (docs/reference.md §1).

Why our own: BEATs is not in transformers and the official code is a script tree, not a package.
Module and parameter names follow the official ``BEATs.py`` / ``backbone.py`` exactly, so the
official state dict (``{'cfg': dict, 'model': state_dict}``) loads strictly. The maths is the same
(post-LN "deep norm" layers, bucketed relative position bias shared by all layers, gated by the
query in every layer), written batch-first and with ``scaled_dot_product_attention``: the official
``(q k^T - max) * 32`` trick only shifts each softmax row, so the result is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import nn

from distill.errors import DistillError
from students.config import SAMPLE_RATE

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
# Kaldi fbank framing at 16 kHz: 25 ms windows every 10 ms, edges snipped (frames fully inside).
_FRAME_SAMPLES, _SHIFT_SAMPLES = 400, 160


class BeatsCheckpointError(DistillError, ValueError):
    """A file that is not an official-format BEATs checkpoint; the message names the file."""


@dataclass
class BeatsConfig:
    """The official ``BEATsConfig`` fields (defaults as upstream); unknown keys are ignored."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: dict) -> BeatsConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def beats_fbank(
    waveforms: torch.Tensor, mean: float = FBANK_MEAN, std: float = FBANK_STD
) -> torch.Tensor:
    """[B, samples] at 16 kHz in [-1, 1] -> normalised Kaldi fbank [B, frames, 128] (fp32).

    The official preprocessing: int16 scale, 128 bins, 25 ms / 10 ms, then (x - mean) / (2 std).
    """
    banks = [
        kaldi.fbank(
            wav.float().unsqueeze(0) * 2**15,
            num_mel_bins=128,
            sample_frequency=SAMPLE_RATE,
            frame_length=25,
            frame_shift=10,
        )
        for wav in waveforms
    ]
    return (torch.stack(banks) - mean) / (2 * std)


def token_padding_mask(
    padding_mask: torch.Tensor, time_patches: int, freq_patches: int, patch_frames: int
) -> torch.Tensor:
    """[B, samples] sample mask (True = padding, at the end) -> [B, time x freq patches] token
    mask, True for every token whose 160 ms patch is not made of real fbank frames only.

    Why not upstream's mapping (a token is padding only when *all* the samples of an evenly
    split group are): it keeps a partly real patch that the clip alone never has (Kaldi frames
    with ``snip_edges`` need 400 real samples; a patch needs ``patch_frames`` real frames), so a
    clip's tokens would depend on its batch-mates. Here a clip in a batch has exactly the tokens
    it has alone. Tokens are time-major: patch t covers tokens t * freq .. t * freq + freq - 1.
    """
    real = (~padding_mask).sum(dim=1)
    frames = torch.where(
        real >= _FRAME_SAMPLES, 1 + (real - _FRAME_SAMPLES) // _SHIFT_SAMPLES, 0
    )
    real_tokens = (frames // patch_frames) * freq_patches
    positions = torch.arange(time_patches * freq_patches, device=padding_mask.device)
    return positions[None, :] >= real_tokens[:, None]


class WeightNormConv1d(nn.Module):
    """Conv1d with weight normalisation over dim 2, stored as ``weight_g`` / ``weight_v`` like
    ``nn.utils.weight_norm(conv, dim=2)`` (the names in the official checkpoints)."""

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4 / (kernel_size * channels)))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch._weight_norm(self.weight_v, self.weight_g, 2)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drops the extra frame an even-sized 'same' convolution produces."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


def relative_position_bucket(
    relative: torch.Tensor, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bidirectional T5-style buckets: exact for small distances, logarithmic up to max_distance."""
    num_buckets //= 2
    buckets = (relative > 0).long() * num_buckets
    distance = relative.abs()
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = (max_exact + log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class MultiheadAttention(nn.Module):
    """Self-attention with the optional (gated) relative position bias of BEATs."""

    def __init__(self, cfg: BeatsConfig, has_relative_bias: bool):
        super().__init__()
        dim, heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        if dim % heads:
            raise ValueError(f"BEATs encoder_embed_dim {dim} not divisible by {heads} heads")
        self.num_heads = heads
        self.head_dim = dim // heads
        self.dropout = cfg.attention_dropout
        self.num_buckets = cfg.num_buckets
        self.max_distance = cfg.max_distance
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.has_relative_bias = has_relative_bias
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, heads)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def compute_bias(self, length: int) -> torch.Tensor:
        """[heads, T, T] bias from the bucketed distance key - query."""
        device = self.relative_attention_bias.weight.device
        position = torch.arange(length, device=device)
        buckets = relative_position_bucket(
            position[None, :] - position[:, None], self.num_buckets, self.max_distance
        )
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        position_bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        mask = None
        if self.has_relative_bias and position_bias is None:
            position_bias = self.compute_bias(length)
        if position_bias is not None:
            mask = position_bias.unsqueeze(0).to(q.dtype)
            if self.gru_rel_pos:
                # The gate reads the unscaled query of each head: [B, H, T, 1].
                gates = self.grep_linear(q).view(batch, self.num_heads, length, 2, 4).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
                mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * mask
        if key_padding_mask is not None:
            pad = torch.zeros(batch, 1, 1, length, dtype=q.dtype, device=q.device)
            pad = pad.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return self.out_proj(out), position_bias


class EncoderLayer(nn.Module):
    """One transformer layer: post-LN with deep-norm residual scaling, or pre-LN."""

    def __init__(self, cfg: BeatsConfig, has_relative_bias: bool):
        super().__init__()
        if cfg.activation_fn not in ("gelu", "relu"):
            raise ValueError(f"BEATs activation_fn {cfg.activation_fn!r} is not supported")
        dim = cfg.encoder_embed_dim
        self.self_attn = MultiheadAttention(cfg, has_relative_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = F.gelu if cfg.activation_fn == "gelu" else F.relu
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = math.pow(2 * cfg.encoder_layers, 1 / 4) if cfg.deep_norm else 1.0

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x, key_padding_mask, position_bias):
        if self.layer_norm_first:
            attn, position_bias = self.self_attn(
                self.self_attn_layer_norm(x), key_padding_mask, position_bias
            )
            x = x + self.dropout(attn)
            x = x + self._ffn(self.final_layer_norm(x))
            return x, position_bias
        attn, position_bias = self.self_attn(x, key_padding_mask, position_bias)
        x = self.self_attn_layer_norm(x * self.alpha + self.dropout(attn))
        x = self.final_layer_norm(x * self.alpha + self._ffn(x))
        return x, position_bias


class TransformerEncoder(nn.Module):
    """Convolutional position embedding, then the layers (relative bias shared by all)."""

    def __init__(self, cfg: BeatsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups),
            SamePad(cfg.conv_pos),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(
            EncoderLayer(cfg, cfg.relative_position_embedding) for _ in range(cfg.encoder_layers)
        )
        if cfg.relative_position_embedding:
            shared = self.layers[0].self_attn.relative_attention_bias
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = shared
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        position_bias = None
        for layer in self.layers:
            x, position_bias = layer(x, padding_mask, position_bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class BEATs(nn.Module):
    """Waveform -> fbank -> 16x16 patches -> transformer -> [B, tokens, 768], time-major.

    Tokens are ordered (time patch, frequency patch): 8 frequency patches per 160 ms.
    """

    def __init__(
        self, cfg: BeatsConfig, fbank_mean: float = FBANK_MEAN, fbank_std: float = FBANK_STD
    ):
        super().__init__()
        self.cfg = cfg
        self.fbank_mean, self.fbank_std = fbank_mean, fbank_std
        self.patch_embedding = nn.Conv2d(
            1,
            cfg.embed_dim,
            kernel_size=cfg.input_patch_size,
            stride=cfg.input_patch_size,
            bias=cfg.conv_bias,
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
            if cfg.embed_dim != cfg.encoder_embed_dim
            else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)

    @property
    def output_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    def forward(
        self, waveforms: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, samples] (16 kHz), padding mask True at padded samples (at the end of each row)
        -> (features [B, tokens, dim], token mask [B, tokens] True at padding, or None).

        Batch-invariant: a clip's real tokens equal those it has alone, and padded tokens are 0.
        """
        dtype = self.patch_embedding.weight.dtype
        fbank = beats_fbank(waveforms, self.fbank_mean, self.fbank_std).to(dtype)
        features = self.patch_embedding(fbank.unsqueeze(1))  # [B, C, time, freq patches]
        token_mask = None
        if padding_mask is not None:
            token_mask = token_padding_mask(
                padding_mask.bool(), features.size(2), features.size(3), self.cfg.input_patch_size
            )
        features = features.flatten(2).transpose(1, 2)
        features = self.layer_norm(features)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.encoder(self.dropout_input(features), token_mask)
        if token_mask is not None:
            features = features.masked_fill(token_mask.unsqueeze(-1), 0.0)
        return features, token_mask


def beats_checkpoint(model: BEATs) -> dict:
    """The official on-disk format for ``model`` (what ``load_beats`` reads)."""
    return {"cfg": model.cfg.to_dict(), "model": model.state_dict()}


def _official_state_dict(state: dict, cfg: BeatsConfig) -> dict:
    """Accept the variants official checkpoints come in: the predictor head of fine-tuned
    checkpoints is dropped (we only extract features), new-style weight-norm names are mapped to
    weight_g/weight_v, and the shared relative bias may be stored for layer 0 only."""
    renames = {
        "parametrizations.weight.original0": "weight_g",
        "parametrizations.weight.original1": "weight_v",
    }
    out = {}
    for key, value in state.items():
        if key.startswith("predictor."):
            continue
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    shared = "encoder.layers.0.self_attn.relative_attention_bias.weight"
    if cfg.relative_position_embedding and shared in out:
        for i in range(1, cfg.encoder_layers):
            out.setdefault(
                f"encoder.layers.{i}.self_attn.relative_attention_bias.weight", out[shared]
            )
    return out


def load_beats(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    fbank_mean: float = FBANK_MEAN,
    fbank_std: float = FBANK_STD,
) -> BEATs:
    """Build BEATs from an official checkpoint file (a dict with 'cfg' and 'model')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BEATs checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise BeatsCheckpointError(
            f"{path}: not a BEATs checkpoint (torch.load with weights_only=True failed: {err})"
        ) from None
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise BeatsCheckpointError(
            f"{path}: not a BEATs checkpoint: expected a dict with 'cfg' and 'model' keys "
            f"(the official format), found {found}"
        )
    if not isinstance(checkpoint["cfg"], dict) or not isinstance(checkpoint["model"], dict):
        raise BeatsCheckpointError(f"{path}: 'cfg' and 'model' must both be dicts")
    cfg = BeatsConfig.from_dict(checkpoint["cfg"])
    model = BEATs(cfg, fbank_mean=fbank_mean, fbank_std=fbank_std)
    state = _official_state_dict(checkpoint["model"], cfg)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BeatsCheckpointError(
            f"{path}: BEATs weights do not match its cfg: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    if dtype is not None:
        model.to(dtype)
    return model


def random_beats(
    checkpoint: str | Path,
    *,
    dtype: torch.dtype | None = None,
    fbank_mean: float = FBANK_MEAN,
    fbank_std: float = FBANK_STD,
) -> BEATs:
    """BEATs with random weights at the shape of ``checkpoint`` (a known official file name, a
    JSON cfg or an existing checkpoint's cfg; ``students.shapes``), for measuring costs."""
    from students.shapes import beats_config

    model = BEATs(BeatsConfig.from_dict(beats_config(str(checkpoint))), fbank_mean, fbank_std)
    return model.to(dtype) if dtype is not None else model
