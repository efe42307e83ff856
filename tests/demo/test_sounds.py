"""Every synthetic sound's caption is true of the clip, checked by measuring the signal."""

import re

import numpy as np
import pytest

from distill.demo.sounds import EVENTS, NUMBERS, SAMPLE_RATE, make_sound

WORDS = {word: n for n, word in NUMBERS.items()}


def count_events(wave: np.ndarray, frame_s: float = 0.01) -> int:
    """Separate bursts of energy: frames above a quarter of the peak RMS, counted as runs."""
    frame = int(frame_s * SAMPLE_RATE)
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame)
    loud = np.sqrt((frames**2).mean(1)) > 0.25 * np.sqrt((frames**2).mean(1)).max()
    return int(np.sum(loud[1:] & ~loud[:-1]) + loud[0])


def dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)[spectrum.argmax()])


def clips_of(kind: str, n: int = 12):
    return [make_sound(seed, kind=kind) for seed in range(n)]


def test_same_seed_same_clip_and_kinds_cycle():
    a, b = make_sound(7), make_sound(7)
    assert np.array_equal(a.waveform, b.waveform) and a.captions == b.captions
    assert [make_sound(i).kind for i in range(len(EVENTS))] == list(EVENTS)
    assert not np.array_equal(make_sound(7).waveform, make_sound(13).waveform)


@pytest.mark.parametrize("seed", range(12))
def test_clips_are_finite_in_range_and_seconds_long(seed):
    clip = make_sound(seed)
    assert clip.waveform.dtype == np.float32 and np.isfinite(clip.waveform).all()
    assert 0.1 < np.abs(clip.waveform).max() <= 1.0
    assert 2.0 <= len(clip.waveform) / SAMPLE_RATE <= 4.0
    assert len(clip.captions) == 3 and len(set(clip.captions)) == 3


def test_beep_and_burst_counts_match_the_caption():
    for clip in clips_of("beeps") + [c for c in clips_of("noise") if "bursts" in c.captions[0]]:
        word = clip.captions[0].split()[0]
        assert count_events(clip.waveform) == WORDS[word], clip.captions[0]


def test_sweep_direction_matches_the_caption():
    for clip in clips_of("sweep"):
        sounding = np.flatnonzero(np.abs(clip.waveform) > 0.01)
        event = clip.waveform[sounding[0]: sounding[-1]]
        third = len(event) // 3
        start, end = dominant_hz(event[:third]), dominant_hz(event[-third:])
        assert ("rising" in clip.captions[0]) == (end > start), clip.captions[0]


def test_steady_tone_pitch_word_matches_the_measured_frequency():
    for clip in clips_of("steady_tone"):
        hz = dominant_hz(clip.waveform)
        expected = "low" if hz < 400 else "high" if hz > 1500 else "medium"
        assert re.search(rf"\b{expected}\b", clip.captions[0]), (hz, clip.captions[0])


def test_ticking_speed_matches_the_caption():
    for clip in clips_of("ticking"):
        per_second = count_events(clip.waveform, frame_s=0.005) / (len(clip.waveform) / SAMPLE_RATE)
        assert ("fast" in clip.captions[0]) == (per_second > 3), (per_second, clip.captions[0])
