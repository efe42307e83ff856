"""Training-time audio augmentation: additive noise and gain, reproducible per sample and epoch.

Upstream (docs/reference.md §1) adds Gaussian noise of a random amplitude and a random gain, each with
probability 0.3. We keep that as ``mode: amplitude`` and add ``mode: snr``, where the noise level
follows the signal (a fixed amplitude is inaudible on loud speech and drowns quiet speech), with
Gaussian noise or real noise clips from ``noise_dir``.

Why a generator seeded by a hash of (seed, sample id, epoch): a sample gets the same augmentation
every time it is seen in one epoch, whichever worker or order loads it, so a run can be reproduced
and a bad batch replayed; a new epoch gives new draws. blake2b, because Python's ``hash()`` of a
string is salted per process.

Why no clipping to [-1, 1]: the encoders take float waveforms, not 16-bit PCM, so values beyond 1
lose nothing; clipping would add distortion that no real input has.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchaudio.functional as AF

from distill.data.audio import load_audio

if TYPE_CHECKING:
    from distill.data.config import AugmentConfig, GainAugmentConfig, NoiseAugmentConfig

NOISE_FILE_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass(frozen=True)
class AppliedAugmentation:
    """What was done to one sample; None where that augmentation was not applied."""

    noise_amplitude: float | None = None
    noise_snr_db: float | None = None
    noise_file: str | None = None  # the real-noise clip used, None for Gaussian noise
    gain_db: float | None = None


def sample_generator(seed: int, sample_id: str, epoch: int, stream: str) -> torch.Generator:
    """A CPU generator that depends only on its arguments (not on process, worker or order).

    ``stream`` separates noise from gain draws, so changing one's settings leaves the other's
    draws as they were.
    """
    key = f"{seed}\x1f{sample_id}\x1f{epoch}\x1f{stream}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _happens(generator: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=generator, dtype=torch.float64).item() < p


class NoiseBank:
    """Real noise clips from a folder, listed once and sorted so every process sees one order."""

    def __init__(self, folder: str | Path, sample_rate: int):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"noise_dir {folder}: folder not found")
        audio_files = (
            p for p in folder.rglob("*") if p.suffix.lower() in NOISE_FILE_SUFFIXES and p.is_file()
        )
        self.files = sorted(audio_files, key=lambda p: p.relative_to(folder).as_posix())
        if not self.files:
            raise ValueError(
                f"noise_dir {folder}: no noise files ({', '.join(NOISE_FILE_SUFFIXES)}) in it"
            )
        self.sample_rate = sample_rate

    def draw(self, length: int, generator: torch.Generator) -> tuple[torch.Tensor, Path]:
        """A random clip, looped or cropped to ``length`` samples at a random offset."""
        index = int(torch.randint(len(self.files), (), generator=generator))
        path = self.files[index]
        # No padding: zeros would be stretches without noise; short clips are looped instead.
        noise = load_audio(path, sample_rate=self.sample_rate, min_seconds=0.0).waveform
        available = noise.numel()
        span = available - length + 1 if available >= length else available
        offset = int(torch.randint(span, (), generator=generator))
        segment = noise[(offset + torch.arange(length)) % available]
        if not segment.any():
            raise ValueError(
                f"{path}: noise segment at {offset / self.sample_rate:.2f} s is digital silence; "
                "it cannot be scaled to an SNR"
            )
        return segment, path


class Augmenter:
    """Noise then gain, each with its own probability; ``__call__`` never changes its input."""

    def __init__(self, cfg: AugmentConfig, sample_rate: int = 16000):
        noise = cfg.noise
        if noise.noise_dir is not None and noise.mode != "snr":
            raise ValueError("augment.noise.noise_dir is used only with augment.noise.mode: snr")
        self.cfg = cfg
        self.sample_rate = sample_rate
        wants_bank = cfg.enabled and noise.noise_dir is not None
        self.noise_bank = NoiseBank(noise.noise_dir, sample_rate) if wants_bank else None

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int = 16000) -> Augmenter:
        return cls(cfg, sample_rate)

    def __call__(
        self, waveform: torch.Tensor, sample_id: str, epoch: int
    ) -> tuple[torch.Tensor, AppliedAugmentation]:
        """The augmented waveform (time on the last axis) and a record of what was applied."""
        if not self.cfg.enabled:
            return waveform, AppliedAugmentation()
        seed = self.cfg.seed
        noise_gen = sample_generator(seed, sample_id, epoch, "noise")
        gain_gen = sample_generator(seed, sample_id, epoch, "gain")
        waveform, noise_record = self._add_noise(waveform, self.cfg.noise, noise_gen)
        waveform, gain_db = self._apply_gain(waveform, self.cfg.gain, gain_gen)
        return waveform, AppliedAugmentation(**noise_record, gain_db=gain_db)

    def _add_noise(
        self, waveform: torch.Tensor, cfg: NoiseAugmentConfig, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict]:
        if not _happens(generator, cfg.p):
            return waveform, {}
        if cfg.mode == "amplitude":
            amplitude = _uniform(generator, *cfg.amplitude)
            noise = torch.randn(waveform.shape, generator=generator).to(waveform)
            return waveform + amplitude * noise, {"noise_amplitude": amplitude}
        snr_db = _uniform(generator, *cfg.snr_db)
        record: dict = {"noise_snr_db": snr_db}
        if self.noise_bank is None:
            noise = torch.randn(waveform.shape, generator=generator)
        else:
            clip, path = self.noise_bank.draw(waveform.shape[-1], generator)
            noise = clip.expand(waveform.shape)
            record["noise_file"] = str(path)
        snr = torch.full(waveform.shape[:-1], snr_db, dtype=waveform.dtype, device=waveform.device)
        return AF.add_noise(waveform, noise.to(waveform), snr), record

    @staticmethod
    def _apply_gain(
        waveform: torch.Tensor, cfg: GainAugmentConfig, generator: torch.Generator
    ) -> tuple[torch.Tensor, float | None]:
        if not _happens(generator, cfg.p):
            return waveform, None
        gain_db = _uniform(generator, *cfg.db)
        return waveform * 10.0 ** (gain_db / 20.0), gain_db
