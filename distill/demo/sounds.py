"""Synthetic sound events with captions that describe them, for the demo's captioning task.

Why synthetic: no sound corpus ships on a package registry, and a caption can only be checked if
it is true of the clip. Every clip here is drawn from parameters (pitch, direction, count, tempo,
loudness) and its captions are written from the same parameters, so each caption is exactly
right, and the paraphrases give the caption metrics several references as Clotho does.

Everything is drawn from one ``numpy.random.Generator``: the same seed gives the same clip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass(frozen=True)
class SoundClip:
    """A rendered clip: float32 samples at 16 kHz and its captions (the first is the canonical
    one, used as the training target; all of them are references at test time)."""

    kind: str
    waveform: np.ndarray
    captions: tuple[str, ...]


def _envelope(n: int, fade: int) -> np.ndarray:
    """A flat envelope with short linear fades, so no event starts or stops with a click."""
    env = np.ones(n, dtype=np.float64)
    fade = min(fade, n // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        env[:fade], env[-fade:] = ramp, ramp[::-1]
    return env


def _place(total: int, event: np.ndarray, start: int) -> np.ndarray:
    out = np.zeros(total)
    end = min(total, start + len(event))
    out[start:end] = event[: end - start]
    return out


def _tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.sin(2 * np.pi * freq * t) * _envelope(len(t), SAMPLE_RATE // 100)


def _pitch_word(freq: float) -> str:
    return "low" if freq < 400 else "high" if freq > 1500 else "medium"


# -------------------------------------------------------------------------------- the events
def steady_tone(rng: np.random.Generator, seconds: float):
    freq = float(rng.choice([150.0, 220.0, 800.0, 1000.0, 2500.0, 3200.0]))
    pitch = _pitch_word(freq)
    if pitch == "low":
        captions = ("a low steady hum", "a deep humming sound", "a low tone hums steadily")
    elif pitch == "high":
        captions = ("a high pitched steady beep", "a long high tone", "a shrill tone rings steadily")
    else:
        captions = ("a steady tone at medium pitch", "a long even tone", "a constant tone sounds")
    return _tone(freq, seconds * float(rng.uniform(0.6, 0.95))), captions


def beeps(rng: np.random.Generator, seconds: float):
    count = int(rng.integers(2, 6))
    freq = float(rng.choice([900.0, 1200.0, 2000.0]))
    gap = int(seconds * SAMPLE_RATE / (count + 1))
    total = int(seconds * SAMPLE_RATE)
    signal = sum(_place(total, _tone(freq, 0.15), gap // 2 + i * gap) for i in range(count))
    word = NUMBERS[count]
    captions = (f"{word} short beeps", f"a device beeps {word} times", f"{word} beeps in a row")
    return signal, captions


def sweep(rng: np.random.Generator, seconds: float):
    rising = bool(rng.integers(0, 2))
    low, high = float(rng.uniform(200, 400)), float(rng.uniform(2000, 3500))
    f0, f1 = (low, high) if rising else (high, low)
    n = int(seconds * float(rng.uniform(0.6, 0.9)) * SAMPLE_RATE)
    freq = np.geomspace(f0, f1, n)
    signal = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * _envelope(n, SAMPLE_RATE // 50)
    if rising:
        captions = ("a tone rising in pitch", "a whistle sweeps upward", "a rising siren like tone")
    else:
        captions = ("a tone falling in pitch", "a whistle sweeps downward", "a falling siren like tone")
    return signal, captions


def noise(rng: np.random.Generator, seconds: float):
    total = int(seconds * SAMPLE_RATE)
    if rng.integers(0, 2):
        signal = rng.standard_normal(total) * 0.5 * _envelope(total, SAMPLE_RATE // 20)
        captions = ("a steady hiss of static", "white noise hisses", "constant static noise")
    else:
        count = int(rng.integers(2, 5))
        gap = total // (count + 1)
        burst = int(0.25 * SAMPLE_RATE)
        signal = sum(_place(total, rng.standard_normal(burst) * _envelope(burst, 200),
                            gap // 2 + i * gap) for i in range(count))
        word = NUMBERS[count]
        captions = (f"{word} bursts of noise", f"static crackles {word} times",
                    f"{word} short bursts of static")
    return signal, captions


def ticking(rng: np.random.Generator, seconds: float):
    fast = bool(rng.integers(0, 2))
    period = float(rng.uniform(0.12, 0.2) if fast else rng.uniform(0.5, 0.8))
    total = int(seconds * SAMPLE_RATE)
    click = np.exp(-np.arange(400) / 60.0) * rng.standard_normal(400)
    starts = np.arange(int(0.1 * SAMPLE_RATE), total - 400, int(period * SAMPLE_RATE))
    signal = sum(_place(total, click, int(s)) for s in starts)
    if fast:
        captions = ("fast ticking", "rapid clicking sounds", "something ticks quickly")
    else:
        captions = ("slow knocking", "slow regular clicks", "something knocks slowly")
    return signal, captions


def tone_over_noise(rng: np.random.Generator, seconds: float):
    total = int(seconds * SAMPLE_RATE)
    freq = float(rng.choice([700.0, 1000.0, 1400.0]))
    signal = 0.25 * rng.standard_normal(total) + _place(total, _tone(freq, seconds * 0.4),
                                                         int(total * 0.3))
    captions = ("a beep over background static", "a tone sounds through a hiss",
                "static noise with a single beep")
    return signal, captions


EVENTS: dict[str, Callable[[np.random.Generator, float], tuple[np.ndarray, tuple[str, ...]]]] = {
    "steady_tone": steady_tone,
    "beeps": beeps,
    "sweep": sweep,
    "noise": noise,
    "ticking": ticking,
    "tone_over_noise": tone_over_noise,
}


def make_sound(seed: int, *, kind: str | None = None, seconds: float | None = None) -> SoundClip:
    """Clip number ``seed``: its kind cycles through EVENTS, loudness and length are drawn."""
    rng = np.random.default_rng(seed)
    kind = kind or list(EVENTS)[seed % len(EVENTS)]
    seconds = seconds or float(rng.uniform(2.0, 4.0))
    event, captions = EVENTS[kind](rng, seconds)
    total = int(seconds * SAMPLE_RATE)
    event = np.asarray(event, dtype=np.float64)[:total]
    # A shorter event (a tone, a sweep) sits somewhere in the clip, with silence around it.
    signal = _place(total, event, int(rng.integers(0, total - len(event) + 1)))
    peak = float(np.max(np.abs(signal))) or 1.0
    loudness = float(rng.uniform(0.2, 0.8))
    return SoundClip(kind, (signal / peak * loudness).astype(np.float32), captions)
