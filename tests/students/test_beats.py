"""BEATs: preprocessing against torchaudio, official key names, checkpoint loading, attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi

from students.beats import (
    BEATs,
    BeatsCheckpointError,
    BeatsConfig,
    beats_checkpoint,
    beats_fbank,
    load_beats,
    relative_position_bucket,
)


@pytest.fixture
def tiny(tiny_beats_cfg):
    def make(**changes) -> BEATs:
        torch.manual_seed(0)
        return BEATs(BeatsConfig.from_dict({**tiny_beats_cfg, **changes})).eval()

    return make


def test_fbank_matches_kaldi_called_directly(noise):
    wave = noise(2)
    direct = kaldi.fbank(
        wave.unsqueeze(0) * 32768,
        num_mel_bins=128,
        sample_frequency=16000,
        frame_length=25,
        frame_shift=10,
    )
    ours = beats_fbank(torch.stack([wave, wave * 0.5]))
    assert ours.shape == (2, 1 + (32000 - 400) // 160, 128) == (2, 198, 128)
    torch.testing.assert_close(ours[0], (direct - 15.41663) / (2 * 6.55582))
    custom = beats_fbank(wave[None], mean=1.0, std=2.0)
    torch.testing.assert_close(custom[0], (direct - 1.0) / 4.0)


def test_state_dict_uses_the_official_names(tiny):
    # Names as in microsoft/unilm beats/BEATs.py and backbone.py (weight_norm over dim 2).
    official = {
        "patch_embedding.weight": (32, 1, 16, 16),
        "layer_norm.weight": (32,),
        "post_extract_proj.weight": (64, 32),
        "encoder.pos_conv.0.weight_g": (1, 1, 16),
        "encoder.pos_conv.0.weight_v": (64, 16, 16),
        "encoder.pos_conv.0.bias": (64,),
        "encoder.layer_norm.weight": (64,),
        "encoder.layers.0.self_attn.q_proj.weight": (64, 64),
        "encoder.layers.0.self_attn.k_proj.bias": (64,),
        "encoder.layers.0.self_attn.out_proj.weight": (64, 64),
        "encoder.layers.0.self_attn.relative_attention_bias.weight": (32, 2),
        "encoder.layers.1.self_attn.relative_attention_bias.weight": (32, 2),
        "encoder.layers.0.self_attn.grep_linear.weight": (8, 32),
        "encoder.layers.0.self_attn.grep_a": (1, 2, 1, 1),
        "encoder.layers.1.self_attn_layer_norm.bias": (64,),
        "encoder.layers.1.fc1.weight": (128, 64),
        "encoder.layers.1.fc2.weight": (64, 128),
        "encoder.layers.1.final_layer_norm.weight": (64,),
    }
    state = tiny().state_dict()
    for key, shape in official.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("predictor") for k in state)


def test_checkpoint_round_trip(tmp_path, noise, tiny):
    model = tiny()
    path = tmp_path / "beats.pt"
    torch.save(beats_checkpoint(model), path)
    loaded = load_beats(path).eval()
    assert loaded.cfg == model.cfg
    wave = noise(3)[None]
    mask = torch.zeros(1, wave.size(1), dtype=torch.bool)
    with torch.no_grad():
        ours, token_mask = loaded(wave, mask)
        torch.testing.assert_close(ours, model(wave, mask)[0], rtol=0, atol=0)
    assert ours.shape == (1, (1 + (48000 - 400) // 160) // 16 * 8, 64)
    assert token_mask.shape == ours.shape[:2] and not token_mask.any()


def test_checkpoint_variants_of_official_files_load(tmp_path, tiny):
    model = tiny()
    checkpoint = beats_checkpoint(model)
    state = dict(checkpoint["model"])
    state.pop("encoder.layers.1.self_attn.relative_attention_bias.weight")  # shared: stored once
    state["predictor.weight"] = torch.zeros(527, 64)  # fine-tuned checkpoints carry a head
    state["predictor.bias"] = torch.zeros(527)
    path = tmp_path / "ft.pt"
    torch.save({"cfg": {**checkpoint["cfg"], "finetuned_model": True}, "model": state}, path)
    loaded = load_beats(path)
    shared = loaded.encoder.layers[1].self_attn.relative_attention_bias.weight
    torch.testing.assert_close(
        shared, state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ([1, 2, 3], "'cfg' and 'model'"),
        ({"state_dict": {}, "config": {}}, "'cfg' and 'model'"),
        ({"cfg": {}, "model": {"bogus.weight": torch.zeros(1)}}, "do not match"),
    ],
)
def test_wrong_checkpoint_contents_name_the_file(tmp_path, content, needle):
    path = tmp_path / "wrong.pt"
    torch.save(content, path)
    with pytest.raises(BeatsCheckpointError, match=needle) as err:
        load_beats(path)
    assert str(path) in str(err.value)


def test_not_a_pickle_or_missing_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"definitely not a torch file")
    with pytest.raises(BeatsCheckpointError, match="garbage.pt"):
        load_beats(path)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_beats(tmp_path / "absent.pt")


def official_attention(attn, x, key_padding_mask):
    """The official MultiheadAttention maths, time-major, with its alpha = 32 trick."""
    tgt, bsz, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    scaling, alpha = head_dim**-0.5, 32
    q = attn.q_proj(x) * scaling / alpha
    k, v = attn.k_proj(x), attn.v_proj(x)
    q = q.view(tgt, bsz * heads, head_dim).transpose(0, 1)
    k = k.view(tgt, bsz * heads, head_dim).transpose(0, 1)
    v = v.view(tgt, bsz * heads, head_dim).transpose(0, 1)
    # the official bucket function, written out again
    ctx = torch.arange(tgt)[:, None]
    rel = torch.arange(tgt)[None, :] - ctx
    half = attn.num_buckets // 2
    bucket = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    large = max_exact + (
        torch.log(rel.float() / max_exact)
        / math.log(attn.max_distance / max_exact)
        * (half - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, half - 1))
    bucket = bucket + torch.where(rel < max_exact, rel, large)
    bias = attn.relative_attention_bias(bucket).permute(2, 0, 1)
    bias = bias.unsqueeze(0).repeat(bsz, 1, 1, 1).view(bsz * heads, tgt, tgt)
    weights = torch.bmm(q, k.transpose(1, 2))
    weights = (weights - weights.max(dim=-1, keepdim=True)[0]) * alpha
    weights = weights.view(bsz, heads, tgt, tgt).masked_fill(
        key_padding_mask[:, None, None, :], float("-inf")
    )
    weights = weights.view(bsz * heads, tgt, tgt)
    query = q.view(bsz, heads, tgt, head_dim) * alpha / scaling
    gate_a, gate_b = torch.sigmoid(
        attn.grep_linear(query).view(bsz, heads, tgt, 2, 4).sum(-1)
    ).chunk(2, dim=-1)
    gate = gate_a * (gate_b * attn.grep_a - 1.0) + 2.0
    weights = weights + gate.view(bsz * heads, tgt, 1) * bias
    out = torch.bmm(F.softmax(weights, dim=-1), v)
    return attn.out_proj(out.transpose(0, 1).contiguous().view(tgt, bsz, dim))


def test_attention_matches_the_official_formulation(tiny):
    model = tiny()
    attn = model.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.relative_attention_bias.weight.normal_(0, 1)
        attn.grep_a.uniform_(0.5, 1.5)
    x = torch.randn(2, 300, 64)  # long enough to reach the logarithmic buckets
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[1, 250:] = True
    with torch.no_grad():
        ours, _ = attn(x, mask, None)
        ref = official_attention(attn, x.transpose(0, 1), mask).transpose(0, 1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_relative_buckets_by_hand():
    rel = torch.tensor([-200, -9, -8, -1, 0, 1, 7, 8, 200])
    # 32 buckets: 16 per direction, 8 exact; positive distances use buckets 16..31.
    got = relative_position_bucket(rel, num_buckets=32, max_distance=128).tolist()
    assert got[3:7] == [1, 0, 17, 23]
    assert got[2] == 8 + int(math.log(8 / 8) / math.log(128 / 8) * 8)  # first log bucket
    assert got[0] == 15 and got[-1] == 31  # beyond max_distance: the last bucket
