"""Schema of the recipe's audio settings: decoding (``data.audio``) and augmentation (``data.augment``).

Owned by ``distill.data`` because the decoder and the augmenter are its modules; the recipe
(``distill.config``) and the student's processor use these classes from here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.schema import (
    NonNegFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    Strict,
    ordered_range,
)


class NoiseAugmentConfig(Strict):
    """Additive noise: a Gaussian amplitude range (upstream) or an SNR range (optionally real noise)."""

    p: Probability = 0.3
    mode: Literal["amplitude", "snr"] = "amplitude"
    amplitude: tuple[NonNegFloat, NonNegFloat] = (0.001, 0.015)
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_dir: str | None = None

    @model_validator(mode="after")
    def _ranges(self) -> NoiseAugmentConfig:
        ordered_range(self.amplitude, "amplitude")
        ordered_range(self.snr_db, "snr_db")
        if self.noise_dir is not None and self.mode != "snr":
            raise ValueError("noise_dir (real noise clips) needs mode: snr")
        return self


class GainAugmentConfig(Strict):
    p: Probability = 0.3
    db: tuple[float, float] = (-12.0, 12.0)

    @model_validator(mode="after")
    def _range(self) -> GainAugmentConfig:
        ordered_range(self.db, "db")
        return self


class AugmentConfig(Strict):
    """Training-time audio augmentation, reproducible per (seed, sample id, epoch)."""

    enabled: bool = True
    seed: int = 0
    noise: NoiseAugmentConfig = Field(default_factory=NoiseAugmentConfig)
    gain: GainAugmentConfig = Field(default_factory=GainAugmentConfig)


class AudioConfig(Strict):
    """Decoding rules shared by training, evaluation and the app (docs/reference.md §1)."""

    sample_rate: PositiveInt = 16000
    min_seconds: NonNegFloat = 1.0
    max_seconds: PositiveFloat = 30.0
    on_error: Literal["raise", "skip"] = "raise"

    @model_validator(mode="after")
    def _lengths(self) -> AudioConfig:
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds ({self.min_seconds}) must be <= max_seconds ({self.max_seconds})")
        return self
