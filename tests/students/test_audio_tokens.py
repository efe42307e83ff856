"""Audio path: Whisper frames, BEATs tokens, fusion, window Q-Former -> exactly 88 tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from students.fusion import AudioFusion
from students.qformer import WindowQFormer, num_windows
from students.whisper_encoder import load_whisper_encoder


def test_window_count_by_hand():
    assert num_windows(1500, 17, 17) == 88  # 88 * 17 = 1496: the last 4 frames are dropped
    assert num_windows(17, 17, 17) == 1
    assert num_windows(16, 17, 17) == 0
    assert num_windows(34, 17, 17) == 2
    assert num_windows(100, 20, 10) == 9


def test_30s_and_10s_both_give_88_audio_tokens(student, noise):
    batch = student.processor([noise(30), noise(10, 1)], ["a", "b"])
    assert batch["whisper_features"].shape == (2, 128, 3000)  # both padded to 30 s
    with torch.no_grad():
        speech = student.whisper(batch["whisper_features"]).last_hidden_state
        beats_30, _ = student.beats(batch["beats_waveform"][:1])
        beats_10, _ = student.beats(noise(10)[None])
        tokens = student.encode_audio(batch)
    assert speech.shape == (2, 1500, 64)
    # Kaldi frames 1 + (N - 400) // 160, then 16-frame patches x 8 frequency patches.
    assert beats_30.shape == (1, (1 + (480000 - 400) // 160) // 16 * 8, 64) == (1, 1496, 64)
    assert beats_10.shape == (1, 496, 64)
    assert tokens.shape == (2, 88, student.causal_lm.config.hidden_size)
    assert student.num_audio_tokens == 88
    single = student.processor([noise(10, 1)], ["b"])
    with torch.no_grad():
        assert student.encode_audio(single).shape == (1, 88, 64)


def test_whisper_input_is_cut_at_30s(student, noise):
    long = noise(45)
    cut = student.processor([long], ["a"])["whisper_features"]
    ref = student.processor([long[: 30 * 16000]], ["a"])["whisper_features"]
    torch.testing.assert_close(cut, ref)


def test_qformer_token_sees_only_its_window(make_cfg):
    torch.manual_seed(0)
    qformer = WindowQFormer(make_cfg().qformer, encoder_width=24).eval()
    frames = torch.randn(1, 1500, 24)
    with torch.no_grad():
        base = qformer(frames)
        moved = frames.clone()
        moved[0, 17 * 5 + 3] += 1.0  # inside window 5
        changed = (qformer(moved) - base).abs().amax(-1)[0]
        tail = frames.clone()
        tail[0, 1497] += 1.0  # in the 4 dropped frames
        unchanged = qformer(tail)
    assert base.shape == (1, 88, 32)
    assert changed[5] > 1e-4
    assert torch.all(changed[torch.arange(88) != 5] == 0)
    torch.testing.assert_close(unchanged, base, rtol=0, atol=0)


def test_fusion_normalises_pads_and_concatenates():
    torch.manual_seed(0)
    fusion = AudioFusion(6, 4)
    with torch.no_grad():
        fusion.ln_audio.weight.uniform_(0.5, 2)
        fusion.ln_audio.bias.uniform_(-1, 1)
    speech, audio = torch.randn(2, 10, 6) * 5 + 3, torch.randn(2, 7, 4) * 0.1
    out = fusion(speech, audio)
    assert out.shape == (2, 10, 10)
    torch.testing.assert_close(out[..., :6], F.layer_norm(speech, (6,), eps=1e-5))
    expected_audio = F.layer_norm(audio, (4,), fusion.ln_audio.weight, fusion.ln_audio.bias)
    torch.testing.assert_close(out[:, :7, 6:], expected_audio)
    assert torch.all(out[:, 7:, 6:] == 0)  # the shorter stream is zero-padded after its LayerNorm


def test_student_without_beats(make_cfg, noise):
    from students import SalmonnStudent

    student = SalmonnStudent.from_config(make_cfg(beats=False)).eval()
    assert student.beats is None and student.fusion.out_dim == 64
    batch = student.processor([noise(3)], ["a"], ["b"])
    assert "beats_waveform" not in batch
    with torch.no_grad():
        assert student.encode_audio(batch).shape == (1, 88, 64)


def test_whisper_kept_in_compute_dtype_unless_float32(make_cfg):
    cfg = make_cfg()
    assert load_whisper_encoder(cfg.whisper, torch.bfloat16).dtype == torch.bfloat16
    fp32 = cfg.whisper.model_copy(update={"dtype": "float32"})
    encoder = load_whisper_encoder(fp32, torch.bfloat16)
    assert encoder.dtype == torch.float32
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
