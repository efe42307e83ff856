"""Decode one audio file into the waveform every encoder expects (docs/reference.md §1).

Rules, shared by training, evaluation and the app: mono (the first channel, as upstream SALMONN
does, rather than a downmix), 16 kHz, padded with zeros to at least 1 s, cut at 30 s. Decoding goes
through soundfile only: ``torchaudio.load`` needs torchcodec, which does not run on our machines
(docs/reference.md §5).

Cost is bounded by what is kept, never by the file or its rate: blocks are decoded and resampled as
a stream and decoding stops once ``max_seconds`` of output exist (a 40-minute file costs what 30 s
cost), and resampling is libsoxr's (python-soxr), whose filter length depends on the quality asked,
not on the rates' lowest common multiple (a sinc kernel built for 16001 -> 16000 Hz has 16000
phases; torchaudio's took 19 s and 4.2 GB here for a 0.2 s clip, BENCHMARKS.md).

Why so many checks: a corpus of a million clips always holds a few broken files, and a broken file
must fail *here*, with its name, not as a NaN loss or a silent half-clip thousands of steps later.
libsndfile does not report everything itself: it silently shortens a WAV whose header claims more
data than the file holds, and it may report an empty stream for a damaged Ogg file. So we read the
WAV header ourselves and check the frame counts that are exact (PCM containers, FLAC's STREAMINFO).
The counts of MP3 and Ogg (Vorbis, Opus) are estimates (from a Xing/Info header, the bitrate and
file size, or the last page's granule position): there the samples decoded are the clip, and a
header that promises more than decodes is not an error.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr
import torch

from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.data.config import AudioConfig

logger = logging.getLogger(__name__)

_READ_BLOCK_FRAMES = 1 << 16
# libsoxr's "high quality" preset (20-bit precision, passband to 91 % of Nyquist, linear phase).
# Against the exact band-limited signal its output is within 1e-4 (tests/data/test_audio.py).
RESAMPLE_QUALITY = "HQ"
# soundfile major formats whose frame count is an estimate, not a promise (see the module text).
_ESTIMATED_COUNT_FORMATS = frozenset({"MP3", "OGG"})
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's SF_COUNT_MAX: the file does not say its length


class AudioError(DistillError, ValueError):
    """A file that cannot give a usable waveform; the message names the file and the reason.

    ``reason`` is a short key (``empty``, ``non_finite``, ``undecodable``, ``truncated``,
    ``not_found``) so skipped files can be counted by cause. The message is the only positional
    argument so the error survives pickling and DataLoader workers re-raising it.
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str = "undecodable"):
        super().__init__(message)
        self.path = path
        self.reason = reason


def _audio_error(path: str | Path, reason: str, detail: str) -> AudioError:
    return AudioError(f"{path}: {detail}", path=str(path), reason=reason)


@dataclass
class AudioClip:
    """A decoded clip and what was done to it (reports need to know about cuts and padding)."""

    waveform: torch.Tensor  # 1-D float32 at ``sample_rate``
    sample_rate: int
    source_seconds: float  # duration of the file, before padding or cutting
    was_cut: bool
    was_padded: bool


def load_audio(
    path: str | Path,
    *,
    sample_rate: int = 16000,
    min_seconds: float = 1.0,
    max_seconds: float = 30.0,
) -> AudioClip:
    """Decode ``path``: first channel, resampled, padded to ``min_seconds``, cut at ``max_seconds``.

    Raises AudioError for any file that cannot give a finite, non-empty, complete waveform.
    """
    if min_seconds > max_seconds:
        raise ValueError(f"min_seconds ({min_seconds}) must be <= max_seconds ({max_seconds})")
    min_samples = round(min_seconds * sample_rate)
    max_samples = round(max_seconds * sample_rate)
    samples, source_frames, source_rate = _decode_first_channel(
        Path(path), sample_rate=sample_rate, keep_samples=max_samples
    )
    waveform = torch.from_numpy(samples)
    was_cut = waveform.numel() > max_samples
    was_padded = waveform.numel() < min_samples
    if was_cut:
        waveform = waveform[:max_samples]
    elif was_padded:
        waveform = torch.nn.functional.pad(waveform, (0, min_samples - waveform.numel()))
    return AudioClip(
        waveform=waveform.contiguous(),
        sample_rate=sample_rate,
        source_seconds=source_frames / source_rate,
        was_cut=was_cut,
        was_padded=was_padded,
    )


def _decode_first_channel(
    path: Path, *, sample_rate: int, keep_samples: int
) -> tuple[np.ndarray, int, int]:
    """The first channel at ``sample_rate`` as float32 in [-1, 1] (float files may exceed it).

    Decoding stops once more than ``keep_samples`` output samples exist, so the result may be
    longer than ``keep_samples`` by up to one block; the caller cuts. Returns the samples, the
    file's length in source frames (counted when read to the end; the header's count when
    stopped early, an estimate for MP3/Ogg) and the source rate.
    """
    if not path.is_file():
        raise _audio_error(path, "not_found", "file not found")
    try:
        with sf.SoundFile(path) as audio:
            declared, source_rate, major = audio.frames, audio.samplerate, audio.format
            if declared == _UNKNOWN_FRAMES:  # e.g. a FLAC streamed out with total samples 0
                needed = -(-(keep_samples + 1) * source_rate // sample_rate)
                declared = _decodable_frames(path, needed + _READ_BLOCK_FRAMES)
                major = "unknown length"  # what decodes is the clip, as for MP3 and Ogg
            wav_frames = _wav_header_frames(path)
            if wav_frames is not None and wav_frames > declared:
                # Checked before decoding: the kept part may end before the missing bytes.
                raise _truncated(path, wav_frames, declared)
            samples, read, at_end = _read_resampled(
                audio, path, declared, sample_rate=sample_rate, keep_samples=keep_samples
            )
    except sf.SoundFileError as err:
        raise _audio_error(path, "undecodable", f"could not be decoded: {err}") from None
    if at_end and major not in _ESTIMATED_COUNT_FORMATS | {"unknown length"} and read < declared:
        raise _truncated(path, declared, read)
    if read == 0:
        raise _audio_error(path, "empty", "audio is empty (0 samples)")
    return samples, read if at_end else max(read, declared), source_rate


def _truncated(path: Path, promised: int, read: int) -> AudioError:
    return _audio_error(
        path, "truncated", f"is truncated: header says {promised} frames, only {read} could be read"
    )


def _read_resampled(
    audio: sf.SoundFile, path: Path, declared_frames: int, *, sample_rate: int, keep_samples: int
) -> tuple[np.ndarray, int, bool]:
    """Decode block by block through a streaming resampler until ``keep_samples`` are out.

    Block by block also lets a decoder failure say how far it got (truncated FLAC). The stream's
    output equals one-shot ``soxr.resample`` of the whole input (libsoxr emits only finished
    samples). Returns (samples, source frames read, whether the end of the file was reached).
    """
    stream = (
        None
        if audio.samplerate == sample_rate
        else soxr.ResampleStream(
            audio.samplerate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )
    )
    blocks: list[np.ndarray] = []
    kept = read = 0
    at_end = False
    block = np.zeros((0, audio.channels), dtype=np.float32)
    while kept <= keep_samples:
        try:
            # Never past the count: libsndfile's FLAC reader fails on a read crossing the end.
            size = min(_READ_BLOCK_FRAMES, max(declared_frames - read, 0))
            block = audio.read(size, dtype="float32", always_2d=True) if size else block[:0]
        except sf.SoundFileError as err:
            decodable = _decodable_frames(path, declared_frames)  # the failed read lost its part
            raise _audio_error(
                path,
                "truncated",
                f"is truncated or corrupt: header says {declared_frames} frames, "
                f"decoding fails after {decodable}: {err}",
            ) from None
        at_end = len(block) == 0
        channel = np.ascontiguousarray(block[:, 0])
        if not np.isfinite(channel).all():
            raise _audio_error(path, "non_finite", "contains NaN or infinite samples")
        read += len(channel)
        if stream is not None:
            channel = stream.resample_chunk(channel, last=at_end)
        blocks.append(channel)
        kept += len(channel)
        if at_end:
            break
    return np.concatenate(blocks), read, at_end


def _decodable_frames(path: Path, enough: int) -> int:
    """How many frames a file of unknown length decodes (at most about ``enough``).

    libsndfile reports such a file (a FLAC whose STREAMINFO total is 0, as streaming encoders
    write it) as SF_COUNT_MAX frames and fails on the read that crosses the real end, losing
    that read's samples; so the end is found with ever smaller reads (each pass re-decodes from
    the start, at most ``enough`` frames: five passes at worst, only for such files).
    """
    good, step = 0, _READ_BLOCK_FRAMES
    while step >= 1:
        with sf.SoundFile(path) as audio:
            try:
                if good:
                    audio.read(good, dtype="float32")
                while good < enough:
                    got = len(audio.read(step, dtype="float32"))
                    good += got
                    if got < step:
                        return good
                return good
            except sf.SoundFileError:
                step //= 16
    return good


def _wav_header_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header promises, or None when it is not a plain WAV or promises nothing.

    libsndfile clamps a WAV's frame count to the bytes present without any warning, so comparing
    ``soundfile.info(path).frames`` with what was read cannot catch a cut WAV: the header can.
    """
    with path.open("rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = file.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt " and size >= 14:
                fmt = file.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif chunk_id == b"data":
                # 0 and 0xFFFFFFFF are placeholders written by streaming encoders.
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                file.seek(size + (size & 1), 1)


# ------------------------------------------------------------------------------------- loader
@dataclass
class AudioStats:
    """What an AudioLoader did, for end-of-run reports (per process: workers count separately)."""

    loaded: int = 0
    cut: int = 0
    padded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


class AudioLoader:
    """load_audio with the recipe's rules and its ``on_error`` policy, counting what happened.

    ``on_error: skip`` turns an AudioError into ``None`` so one broken file out of a million does
    not stop a run; it never swallows any other exception (those are bugs, not bad data).
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        min_seconds: float = 1.0,
        max_seconds: float = 30.0,
        on_error: str = "raise",
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.sample_rate = sample_rate
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds
        self.on_error = on_error
        self.stats = AudioStats()
        self._reported: set[str] = set()

    @classmethod
    def from_config(cls, cfg: AudioConfig) -> AudioLoader:
        return cls(
            sample_rate=cfg.sample_rate,
            min_seconds=cfg.min_seconds,
            max_seconds=cfg.max_seconds,
            on_error=cfg.on_error,
        )

    def load(self, path: str | Path) -> AudioClip | None:
        """The clip, or None when the file is broken and the policy is ``skip``."""
        try:
            clip = load_audio(
                path,
                sample_rate=self.sample_rate,
                min_seconds=self.min_seconds,
                max_seconds=self.max_seconds,
            )
        except AudioError as err:
            if self.on_error == "raise":
                raise
            self.stats.skipped[err.reason] += 1
            self._log_once(str(path), logging.WARNING, "skipped %s", err)
            return None
        self.stats.loaded += 1
        self.stats.padded += clip.was_padded
        if clip.was_cut:
            self.stats.cut += 1
            self._log_once(
                str(path),
                logging.INFO,
                "%s: cut at %.1f s (was %.2f s)",
                path,
                self.max_seconds,
                clip.source_seconds,
            )
        return clip

    __call__ = load

    def _log_once(self, key: str, level: int, message: str, *args: object) -> None:
        # Files come back every epoch; one line per file keeps the log readable.
        if key not in self._reported:
            self._reported.add(key)
            logger.log(level, message, *args)

    def summary(self) -> str:
        """One line for the end-of-run report."""
        stats = self.stats
        skipped = sum(stats.skipped.values())
        line = (
            f"audio: {stats.loaded} loaded, {stats.cut} cut at {self.max_seconds:g} s, "
            f"{stats.padded} padded to {self.min_seconds:g} s, {skipped} skipped"
        )
        if skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in stats.skipped.most_common())
            line += f" ({reasons})"
        return line
