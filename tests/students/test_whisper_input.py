"""``model.whisper.pad_to_30s: false``: each clip encoded alone at its own length.

References: transformers' own ``WhisperEncoder.forward`` (at 3000 frames, and on a copy of the
encoder whose positional table is cut to the short length, so that forward accepts it); frame
counts worked out by hand from Whisper's 20 ms encoder frames and 17-frame windows; the padded
30 s log-mel features of the same clip; and the same clip run alone (batch invariance).
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from students import SalmonnStudent
from students.whisper_encoder import encode_any_length
from tests.students.test_batch_invariance import alone_and_together

SR = 16000


@pytest.fixture(scope="module")
def encoder(student):
    return student.whisper


@pytest.fixture(scope="module")
def short_student(make_cfg):
    torch.manual_seed(3)
    cfg = make_cfg(qformer={"audio_tokens": "clip"}, whisper={"pad_to_30s": False})
    return SalmonnStudent.from_config(cfg).eval()


def _features(encoder, frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mels = encoder.config.num_mel_bins
    return torch.randn(2, mels, frames, generator=generator).to(encoder.dtype)


def test_full_length_matches_transformers_forward(encoder):
    features = _features(encoder, 3000)
    with torch.no_grad():
        ours = encode_any_length(encoder, features).last_hidden_state
        theirs = WhisperEncoder.forward(encoder, features).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("frames", [102, 204, 1000])
def test_short_input_matches_a_cut_down_transformers_encoder(encoder, frames):
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.max_source_positions = frames // 2
    reference = WhisperEncoder(config).to(encoder.dtype).eval()
    state = encoder.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][: frames // 2]
    reference.load_state_dict(state)
    features = _features(encoder, frames, seed=frames)
    with torch.no_grad():
        expected = reference(features).last_hidden_state
        got = encoder(features).last_hidden_state
    assert got.shape == (2, frames // 2, encoder.config.d_model)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames", [101, 3002])
def test_odd_or_over_30s_input_is_refused(encoder, frames):
    with pytest.raises(ValueError, match="even number of mel frames up to 3000"):
        encode_any_length(encoder, _features(encoder, frames))


@pytest.mark.parametrize(
    ("seconds", "windows", "mel_frames"),
    [
        (1.0, 3, 102),  # 50 encoder frames: windows at 0, 17, 34 end at frame 51: 102 mel frames
        (2.0, 6, 204),  # 100 frames: 6 windows, the last ends at 6 * 17 = 102 frames
        (3.5, 11, 374),  # 175 frames: 11 windows, 187 encoder frames
        (30.0, 88, 2992),  # 88 whole windows end at frame 1496
    ],
)
def test_frames_per_clip_by_hand(short_student, noise, seconds, windows, mel_frames):
    processor = short_student.processor
    batch = processor([noise(seconds, 1)], ["a"])
    assert batch["audio_lengths"].tolist() == [windows]
    assert batch["whisper_frames"].tolist() == [mel_frames]
    assert batch["whisper_features"].shape[-1] == mel_frames


def _loud_end(samples: int) -> torch.Tensor:
    """Energy in the last samples, close to where the kept frames end (4 windows of 17 encoder
    frames end at 21760 samples, 6 at 32640): where a too-short input's STFT reflection shows."""
    wave = torch.zeros(samples)
    wave[-5:] = 0.9
    return wave


@pytest.mark.parametrize("case", ["noise", "silence", "loud end", "near 30 s"])
def test_features_are_the_padded_ones_cut(short_student, student, noise, case):
    """The short path computes log-mels over a few seconds only; the reference is the 30 s
    input's, cut (equal to the bit: same frames, same maximum for Whisper's clamp)."""
    waves = {"noise": [noise(1.2, 1), noise(3.5, 2)],
             "silence": [torch.zeros(SR * 2), noise(1.0, 3)],
             "loud end": [_loud_end(21750), _loud_end(32639)],
             "near 30 s": [noise(29.9, 4), noise(1.0, 5)]}[case]
    short = short_student.processor(waves, ["a", "b"])
    padded = student.processor(waves, ["a", "b"])["whisper_features"]
    width = int(short["whisper_frames"].max())
    assert short["whisper_features"].shape[-1] == width
    if case == "noise":
        assert width == 374  # 3.5 s: 11 windows (by hand above)
    torch.testing.assert_close(short["whisper_features"], padded[:, :, :width], rtol=0, atol=0)


def test_a_clip_encodes_the_same_alone_and_in_a_batch(short_student, noise):
    waves = [noise(1.0, 1), noise(2.5, 2), noise(6.0, 3), noise(2.5, 4)]
    alone_and_together(short_student, waves, ["Say it.", "What do you hear?", "Transcribe.",
                                              "Say it."])
    with torch.no_grad():  # alone, a clip's only encoded windows are its own
        for wave in waves:
            single = short_student.processor([wave], ["a"])
            assert short_student.encode_audio(single).shape[1] == int(single["audio_lengths"][0])


def test_short_input_needs_clip_tokens(make_cfg):
    with pytest.raises(ValidationError, match="pad_to_30s: false needs qformer.audio_tokens: clip"):
        make_cfg(whisper={"pad_to_30s": False})
