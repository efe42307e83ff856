"""load_audio and AudioLoader against files written here, with known content."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.config import AudioConfig
from distill.data.audio import AudioClip, AudioError, AudioLoader, load_audio


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, samples, rate=16000, **kwargs):
    sf.write(path, samples, rate, **kwargs)
    return path


def dominant_frequency(waveform: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.numpy()))
    return float(np.fft.rfftfreq(waveform.numel(), 1 / rate)[spectrum.argmax()])


# ------------------------------------------------------------------------------- decoding
def test_resamples_a_tone_to_the_expected_length_and_pitch(tmp_path):
    path = write(tmp_path / "a440.wav", tone(440, 2.5, 44100), rate=44100)

    clip = load_audio(path)

    assert clip.sample_rate == 16000
    assert clip.waveform.dtype == torch.float32 and clip.waveform.ndim == 1
    assert clip.waveform.numel() == 40000  # 2.5 s at 16 kHz
    assert dominant_frequency(clip.waveform, 16000) == pytest.approx(440, abs=0.5)
    assert clip.waveform.abs().max() == pytest.approx(0.5, abs=0.01)  # no level change
    assert clip.source_seconds == pytest.approx(2.5)
    assert not clip.was_cut and not clip.was_padded


def test_keeps_the_first_channel(tmp_path):
    left, right = tone(300, 1.5, 16000), tone(1000, 1.5, 16000, amplitude=0.2)
    path = write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")

    clip = load_audio(path)

    np.testing.assert_array_equal(clip.waveform.numpy(), left)


def test_pads_short_clips_with_zeros_to_one_second(tmp_path):
    samples = tone(440, 0.3, 16000) + 0.1
    path = write(tmp_path / "short.wav", samples, subtype="FLOAT")

    clip = load_audio(path)

    assert clip.waveform.numel() == 16000
    np.testing.assert_array_equal(clip.waveform[:4800].numpy(), samples)
    assert torch.all(clip.waveform[4800:] == 0)
    assert clip.was_padded and not clip.was_cut
    assert clip.source_seconds == pytest.approx(0.3)


def test_cuts_long_clips_at_thirty_seconds(tmp_path):
    samples = tone(440, 35.0, 16000)
    path = write(tmp_path / "long.flac", samples)

    clip = load_audio(path)

    assert clip.waveform.numel() == 480000
    assert clip.was_cut and not clip.was_padded
    assert clip.source_seconds == pytest.approx(35.0)
    np.testing.assert_allclose(clip.waveform.numpy(), samples[:480000], atol=1e-4)  # 16-bit


@pytest.mark.parametrize(
    ("name", "kwargs", "tolerance"),
    [
        ("a.wav", {"subtype": "PCM_16"}, 1e-4),
        ("a.flac", {"subtype": "PCM_24"}, 1e-6),
        ("a.ogg", {"format": "OGG", "subtype": "VORBIS"}, None),
    ],
)
def test_decodes_wav_flac_and_ogg(tmp_path, name, kwargs, tolerance):
    samples = tone(440, 1.25, 16000)
    clip = load_audio(write(tmp_path / name, samples, **kwargs))

    assert clip.waveform.numel() == 20000
    if tolerance is not None:
        np.testing.assert_allclose(clip.waveform.numpy(), samples, atol=tolerance)
    else:  # lossy: the pitch and level survive, the samples do not
        assert dominant_frequency(clip.waveform, 16000) == pytest.approx(440, abs=1)
        assert clip.waveform.abs().max() == pytest.approx(0.5, abs=0.05)


def test_min_and_max_seconds_are_parameters(tmp_path):
    path = write(tmp_path / "a.wav", tone(440, 3.0, 8000), rate=8000)

    clip = load_audio(path, sample_rate=16000, min_seconds=5.0, max_seconds=10.0)
    assert clip.waveform.numel() == 80000 and clip.was_padded

    clip = load_audio(path, sample_rate=16000, min_seconds=0.0, max_seconds=2.0)
    assert clip.waveform.numel() == 32000 and clip.was_cut


# --------------------------------------------------------------------------------- errors
def assert_audio_error(path, reason: str, *fragments: str) -> AudioError:
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message
    assert caught.value.reason == reason
    assert caught.value.path == str(path)
    return caught.value


def test_a_file_with_no_samples_is_an_error(tmp_path):
    path = write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    assert_audio_error(path, "empty", "audio is empty (0 samples)")


def test_a_zero_byte_file_is_an_error(tmp_path):
    path = tmp_path / "nothing.wav"
    path.write_bytes(b"")
    assert_audio_error(path, "undecodable", "could not be decoded")


def test_nan_samples_are_an_error(tmp_path):
    samples = tone(440, 1.0, 16000)
    samples[1234] = np.nan
    path = write(tmp_path / "nan.wav", samples, subtype="FLOAT")
    assert_audio_error(path, "non_finite", "contains NaN or infinite samples")


def test_infinite_samples_are_an_error(tmp_path):
    samples = tone(440, 1.0, 16000)
    samples[-1] = -np.inf
    path = write(tmp_path / "inf.wav", samples, subtype="FLOAT")
    assert_audio_error(path, "non_finite", "NaN or infinite")


def cut_bytes(source, target, keep: float):
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_a_truncated_wav_is_an_error(tmp_path, subtype):
    # libsndfile shortens such a file silently (soundfile.info agrees with the short read).
    full = write(tmp_path / "full.wav", tone(440, 2.0, 16000), subtype=subtype)
    path = cut_bytes(full, tmp_path / "cut.wav", keep=0.5)
    assert sf.info(path).frames < 32000  # the premise: soundfile itself does not complain

    assert_audio_error(path, "truncated", "is truncated: header says 32000 frames, only")


@pytest.mark.parametrize("keep", [0.1, 0.6, 0.99])
def test_a_truncated_flac_is_an_error(tmp_path, keep):
    full = write(tmp_path / "full.flac", tone(440, 2.0, 16000) + tone(97, 2.0, 16000, 0.2))
    path = cut_bytes(full, tmp_path / "cut.flac", keep=keep)

    assert_audio_error(path, "truncated", "is truncated", "header says 32000 frames")


def test_random_bytes_are_an_error(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_audio_error(path, "undecodable", "could not be decoded: ")


def test_a_missing_file_is_an_error(tmp_path):
    assert_audio_error(tmp_path / "absent.wav", "not_found", "file not found")


def test_a_wav_written_by_a_stream_is_not_mistaken_for_truncated(tmp_path):
    # Streaming writers leave 0xFFFFFFFF as the data size; that promises nothing.
    full = write(tmp_path / "full.wav", tone(440, 1.0, 16000))
    data = bytearray(full.read_bytes())
    data_at = data.index(b"data")
    data[data_at + 4 : data_at + 8] = b"\xff\xff\xff\xff"
    path = tmp_path / "stream.wav"
    path.write_bytes(bytes(data))

    assert load_audio(path).waveform.numel() == 16000


def test_audio_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(AudioError("x.wav: bad", path="x.wav", reason="empty")))
    assert (str(error), error.path, error.reason) == ("x.wav: bad", "x.wav", "empty")


# --------------------------------------------------------------------------------- loader
@pytest.fixture
def good_and_bad(tmp_path):
    good = write(tmp_path / "good.wav", tone(440, 0.5, 16000))
    long = write(tmp_path / "long.wav", tone(440, 31.0, 16000))
    empty = write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(os.urandom(1000))
    return good, long, empty, garbage


def test_loader_skip_policy_counts_by_reason(good_and_bad, caplog):
    good, long, empty, garbage = good_and_bad
    loader = AudioLoader.from_config(AudioConfig(on_error="skip"))

    with caplog.at_level(logging.INFO, logger="distill.data.audio"):
        results = [loader.load(p) for p in (good, long, empty, garbage, long, empty)]

    assert [r is None for r in results] == [False, False, True, True, False, True]
    assert isinstance(results[0], AudioClip)
    stats = loader.stats
    assert (stats.loaded, stats.cut, stats.padded) == (3, 2, 1)
    assert stats.skipped == {"empty": 2, "undecodable": 1}
    cut_lines = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(cut_lines) == 1  # once per file, however often it is loaded
    assert str(long) in cut_lines[0].getMessage() and "31.00 s" in cut_lines[0].getMessage()
    summary = loader.summary()
    assert "3 loaded" in summary and "2 cut" in summary and "3 skipped" in summary
    assert "empty: 2" in summary and "undecodable: 1" in summary


def test_loader_raise_policy_reraises(good_and_bad):
    _, _, empty, _ = good_and_bad
    loader = AudioLoader.from_config(AudioConfig(on_error="raise"))

    with pytest.raises(AudioError, match="empty.wav"):
        loader.load(empty)
    assert sum(loader.stats.skipped.values()) == 0


def test_loader_skip_never_swallows_other_errors(good_and_bad, monkeypatch):
    good, *_ = good_and_bad
    loader = AudioLoader.from_config(AudioConfig(on_error="skip"))

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not bad data")

    monkeypatch.setattr("distill.data.audio.load_audio", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        loader.load(good)


def test_loader_applies_the_config(tmp_path):
    path = write(tmp_path / "a.wav", tone(440, 3.0, 22050), rate=22050)
    loader = AudioLoader.from_config(AudioConfig(sample_rate=8000, min_seconds=4, max_seconds=5))

    clip = loader(path)

    assert clip.sample_rate == 8000 and clip.waveform.numel() == 32000 and clip.was_padded
