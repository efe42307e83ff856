"""load_audio and AudioLoader against files written here, with known content."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest
import soundfile as sf
import soxr
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


# ------------------------------------------------------------ resampling and what is read
def band_limited(rate: int, seconds: float, nyquist: float) -> tuple[np.ndarray, callable]:
    """A sum of sines below ``nyquist`` and the function that evaluates it at any time (s)."""
    parts = [(0.2, 97.0), (0.3, 440.0), (0.1, 0.3 * nyquist), (0.1, 0.6 * nyquist)]
    parts.append((0.05, 0.85 * nyquist))

    def at(t: np.ndarray) -> np.ndarray:
        return sum(a * np.sin(2 * np.pi * f * t + 1.0) for a, f in parts)

    return at(np.arange(round(seconds * rate)) / rate).astype(np.float32), at


@pytest.mark.parametrize("rate", [44100, 22050, 8000, 11025, 16001, 15999, 7919, 44101, 96000])
def test_resampling_equals_the_exact_band_limited_signal(tmp_path, rate):
    # The reference is the signal itself, evaluated at 16 kHz sample times: the ideal resampler.
    # 50 ms at each end are left out (every finite filter rings there).
    samples, exact = band_limited(rate, 2.0, nyquist=min(rate, 16000) / 2)
    clip = load_audio(write(tmp_path / "a.wav", samples, rate=rate, subtype="FLOAT"))

    got = clip.waveform.numpy()
    assert abs(got.size - 32000) <= 1  # 2 s, rounded to whole samples
    want = exact(np.arange(got.size) / 16000)
    assert np.abs(got - want)[800:-800].max() < 1e-4


@pytest.mark.parametrize("rate", [16001, 44101, 7919])
def test_a_rate_without_a_common_factor_loads_as_fast_as_a_common_one(tmp_path, rate):
    # Before: torchaudio's kernel had one phase per output sample of the rates' lowest common
    # multiple (16001 Hz: 16000 phases), 28 s and 4.8 GB for this 0.2 s clip.
    common = write(tmp_path / "common.wav", tone(440, 0.2, 22050), rate=22050)
    odd = write(tmp_path / "odd.wav", tone(440, 0.2, rate), rate=rate)
    load_audio(common)  # warm-up

    started = time.perf_counter()
    clip = load_audio(odd)
    seconds = time.perf_counter() - started

    assert seconds < 0.5  # about 1 ms here; the bound leaves room for a loaded machine
    assert clip.waveform.numel() == 16000 and clip.was_padded
    assert dominant_frequency(clip.waveform[:3200], 16000) == pytest.approx(440, abs=5)


@pytest.fixture
def count_frames_read(monkeypatch):
    """How many frames soundfile decoded (a spy around the real SoundFile.read)."""
    read = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        out = real_read(self, frames, *args, **kwargs)
        read.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    return read


@pytest.mark.parametrize(("name", "kwargs"), [("long.wav", {}), ("long.flac", {})])
def test_a_long_file_is_decoded_only_as_far_as_it_is_kept(
    tmp_path, count_frames_read, name, kwargs
):
    rate = 44100
    samples = tone(440, 75.0, rate) + tone(3000, 75.0, rate, amplitude=0.1)
    path = write(tmp_path / name, samples, rate=rate, **kwargs)
    full = sf.read(path, dtype="float32")[0]  # the reference resamples the whole file
    count_frames_read.clear()

    clip = load_audio(path)

    assert sum(count_frames_read) <= 30 * rate + 2 * 65536  # 30 s and at most two blocks more
    assert clip.was_cut and clip.source_seconds == pytest.approx(75.0)
    reference = soxr.resample(full, rate, 16000, quality="HQ")[:480000]
    np.testing.assert_array_equal(clip.waveform.numpy(), reference)


def test_a_long_wav_cut_after_the_kept_part_is_still_reported_truncated(tmp_path):
    full = write(tmp_path / "full.wav", tone(440, 40.0, 16000))
    path = cut_bytes(full, tmp_path / "cut.wav", keep=0.9)  # 36 s of 40 present

    assert_audio_error(path, "truncated", "header says 640000 frames, only")


# ------------------------------------------------------- compressed formats: trust the samples
def cbr_mp3(path, seconds=3.0, rate=44100):
    """A constant-bitrate MP3 as LAME writes it: an ``Info`` header frame with a frame count."""
    samples = tone(440, seconds, rate) + tone(97, seconds, rate, amplitude=0.1)
    sf.write(path, samples, rate, format="MP3", bitrate_mode="CONSTANT", compression_level=0.5)
    data = path.read_bytes()
    assert data.find(b"Info") > 0  # the premise of the header edits below
    return path


def edit_info_header(source, target, offset: int, new: bytes):
    data = bytearray(source.read_bytes())
    at = data.find(b"Info") + offset
    data[at : at + len(new)] = new
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize(
    ("edit", "offset", "new"),
    [
        ("intact", 0, b"Info"),
        ("frame count zeroed", 8, bytes(4)),
        ("whole tag zeroed", 0, bytes(120)),  # the bitrate x size estimate is then 134898
        ("frame count too large", 8, (200).to_bytes(4, "big")),
    ],
)
def test_an_mp3_whose_header_frame_count_is_wrong_loads_whole(tmp_path, edit, offset, new):
    path = edit_info_header(cbr_mp3(tmp_path / "a.mp3"), tmp_path / "edited.mp3", offset, new)

    clip = load_audio(path)

    # The decoder may keep its delay and padding (up to two 1152-sample frames) once the
    # Info/LAME tag that says how many to drop is gone.
    assert clip.source_seconds == pytest.approx(3.0, abs=0.06)
    assert clip.waveform.numel() == pytest.approx(48000, abs=1000)
    assert dominant_frequency(clip.waveform, 16000) == pytest.approx(440, abs=1)


@pytest.mark.parametrize(
    ("name", "kwargs", "rate"),
    [
        ("a.mp3", {"format": "MP3"}, 44100),
        ("a.opus", {"format": "OGG", "subtype": "OPUS"}, 48000),
        ("a.ogg", {"format": "OGG", "subtype": "VORBIS"}, 22050),
    ],
)
def test_lossy_formats_decode_to_the_right_length_and_pitch(tmp_path, name, kwargs, rate):
    samples = tone(440, 2.0, rate)
    clip = load_audio(write(tmp_path / name, samples, rate=rate, **kwargs))

    assert clip.waveform.numel() == pytest.approx(32000, abs=1000)
    assert dominant_frequency(clip.waveform, 16000) == pytest.approx(440, abs=1)
    assert clip.waveform.abs().max() == pytest.approx(0.5, abs=0.05)


def flac_of_unknown_length(path, samples, rate=16000):
    """A FLAC whose STREAMINFO total-samples field is 0 ("unknown"), as streaming encoders write.

    STREAMINFO starts at byte 8; total samples are the low 4 bits of its byte 13 and bytes 14-17.
    """
    write(path, samples, rate=rate)
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the premise: STREAMINFO comes first
    data[8 + 13] &= 0xF0
    data[8 + 14 : 8 + 18] = bytes(4)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("seconds", [2.0, 35.0])
def test_a_flac_of_unknown_length_decodes_what_it_holds(tmp_path, seconds):
    samples = tone(440, seconds, 16000)
    path = flac_of_unknown_length(tmp_path / "stream.flac", samples)
    assert sf.info(path).frames == 2**63 - 1  # libsndfile: length unknown

    clip = load_audio(path)

    # libsndfile's FLAC reader cannot hand over the very last sample of such a file.
    kept = min(samples.size, 480000)
    assert clip.waveform.numel() in (kept - 1, kept)
    np.testing.assert_allclose(clip.waveform[: kept - 1].numpy(), samples[: kept - 1], atol=1e-4)
    assert clip.was_cut == (seconds > 30)


def test_a_truncated_flac_says_how_much_decodes(tmp_path):
    full = write(tmp_path / "full.flac", tone(440, 2.0, 16000) + tone(97, 2.0, 16000, 0.2))
    path = cut_bytes(full, tmp_path / "cut.flac", keep=0.5)
    error = assert_audio_error(path, "truncated", "header says 32000 frames, decoding fails after")
    decoded = int(str(error).split("fails after ")[1].split(":")[0])
    assert 8000 < decoded < 32000  # about half the samples, as half the bytes were kept
