"""Offline text-to-speech for the demo's spoken sentences: eSpeak NG through ctypes.

Why eSpeak NG: it is a formant synthesiser with no model weights, so it needs no download and
no hub; the PyPI wheel ``espeakng-loader`` carries ``libespeak-ng.so`` and its voice data, so
it needs no system package or root either. Its speech is robotic but real, word for word
intelligible speech of a known transcript, which is what an ASR demo needs.

The C library keeps global state (one voice, one callback), so every call holds a lock. It also
carries synthesis state (glottal and flutter phases) from one utterance into the next, which no
API call resets: the same text comes out a few samples different depending on what was said
before in the process. ``speak_all`` therefore synthesises a whole list in a fresh process, so
the same list always gives exactly the same samples.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from distill.errors import DistillFailure

# From speak_lib.h: espeak_AUDIO_OUTPUT, espeak_PARAMETER and espeak_ERROR values.
_AUDIO_OUTPUT_SYNCHRONOUS = 0x0002
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK = 0
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_NOISE_SEED = 12345

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


class SpeechError(DistillFailure, RuntimeError):
    """eSpeak NG could not be loaded or refused a request; the message says which and why."""


@dataclass(frozen=True)
class Voice:
    """One speaker of the demo: an eSpeak voice name (with optional ``+variant``), its speaking
    rate in words per minute and its base pitch (0-99)."""

    name: str
    rate_wpm: int = 160
    pitch: int = 50


class Espeak:
    """The loaded library; ``synthesize`` turns text into a float32 waveform at ``sample_rate``."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise SpeechError(
                "the demo's speech needs eSpeak NG: `pip install espeakng-loader` "
                "(a dependency of this project, installed by scripts/ensure-venv.sh)"
            ) from err
        self._lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path().encode()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if rate <= 0:
            raise SpeechError(f"eSpeak NG failed to initialise with its data at {data_path!r}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: C holds only a pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self._lock = threading.Lock()

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0: go on synthesising

    def synthesize(self, text: str, voice: Voice = Voice("en-us")) -> np.ndarray:
        """Speak ``text`` with ``voice``; float32 samples in [-1, 1] at ``self.sample_rate``."""
        if not text.strip():
            raise SpeechError("nothing to say: the text is empty")
        encoded = text.encode("utf-8")
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
                raise SpeechError(f"eSpeak NG has no voice {voice.name!r}")
            self._lib.espeak_SetParameter(_PARAM_RATE, int(voice.rate_wpm), 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, int(voice.pitch), 0)
            # Breathy voices (+f3, ...) mix in noise from a generator eSpeak seeds from the
            # clock; a fixed seed per utterance makes them reproducible too.
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(_NOISE_SEED))
            self._chunks = []
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0,
                                            _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK or not chunks:
            raise SpeechError(f"eSpeak NG produced no audio for {text!r} (status {status})")
        return np.concatenate(chunks).astype(np.float32) / 32768.0


_ENGINE: Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> Espeak:
    """The process-wide eSpeak instance (the C library can be initialised only once usefully)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Espeak()
        return _ENGINE


def _resample(samples: np.ndarray, source_rate: int, sample_rate: int) -> np.ndarray:
    if source_rate == sample_rate:
        return samples
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(samples), source_rate, sample_rate).numpy()


def speak(text: str, voice: Voice = Voice("en-us"), sample_rate: int = 16000) -> np.ndarray:
    """``text`` spoken by ``voice`` in this process, as float32 samples at ``sample_rate``."""
    tts = engine()
    return _resample(tts.synthesize(text, voice), tts.sample_rate, sample_rate)


def _synthesize_in_child(items: list[tuple[str, Voice]]) -> tuple[int, list[np.ndarray]]:
    tts = engine()
    return tts.sample_rate, [tts.synthesize(text, voice) for text, voice in items]


def speak_all(items: list[tuple[str, Voice]], sample_rate: int = 16000) -> list[np.ndarray]:
    """Speak every ``(text, voice)`` in a fresh process: reproducible to the sample (see above)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not items:
        return []
    # spawn: a forked child would inherit this process's eSpeak state.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        native_rate, waves = pool.submit(_synthesize_in_child, list(items)).result()
    return [_resample(w, native_rate, sample_rate) for w in waves]
