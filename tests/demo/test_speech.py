"""eSpeak NG through ctypes: real speech, deterministic, voices differ, bad requests are clear."""

import numpy as np
import pytest

from distill.demo.speech import SpeechError, Voice, engine, speak, speak_all


def band_share(wave: np.ndarray, low: float, high: float, rate: int = 16000) -> float:
    power = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / rate)
    return float(power[(freqs >= low) & (freqs <= high)].sum() / power.sum())


def test_speak_all_is_reproducible_to_the_sample():
    items = [("the old man walks near the river", Voice("en-us")),
             ("a small bird sings", Voice("en", 170, 40)),
             ("a breathy voice mixes in noise", Voice("en-us+f3"))]
    first, second = speak_all(items), speak_all(items)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    # A prefix of the list gives the same clips: a clip does not depend on what comes after it.
    assert np.array_equal(speak_all(items[:1])[0], first[0])


def test_speech_is_16khz_and_sounds_like_speech():
    wave = speak("the old man walks near the river")
    assert wave.dtype == np.float32 and np.isfinite(wave).all()
    assert 1.0 < len(wave) / 16000 < 4.0  # seven words at about 150 words a minute
    assert 0.05 < np.abs(wave).max() <= 1.0
    # Voiced speech keeps nearly all of its energy between 80 Hz and 4 kHz.
    assert band_share(wave, 80, 4000) > 0.9


def test_longer_text_takes_longer_and_rate_speeds_it_up():
    short = speak("hello")
    long = speak("hello there, the quick brown fox jumps over the lazy dog")
    assert len(long) > 3 * len(short)
    slow = speak("the quick brown fox jumps", Voice("en-us", rate_wpm=120))
    fast = speak("the quick brown fox jumps", Voice("en-us", rate_wpm=240))
    assert len(fast) < 0.75 * len(slow)


def test_voices_differ():
    text = "a small bird sings in the garden"
    waves = {name: speak(text, Voice(name)) for name in ("en-us", "en", "en-us+f3")}
    assert len({w.tobytes() for w in waves.values()}) == 3


def test_native_rate_is_reported():
    assert engine().sample_rate == 22050
    assert len(engine().synthesize("hello")) > len(speak("hello"))  # resampled down to 16 kHz


def test_bad_requests_are_clear_errors():
    with pytest.raises(SpeechError, match="empty"):
        speak("   ")
    with pytest.raises(SpeechError, match="no voice 'xx-nowhere'"):
        speak("hello", Voice("xx-nowhere"))
