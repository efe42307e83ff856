"""Dynamic gradient clipping: ZClip (default), AutoClip, a fixed max, or none.

Why dynamic: a fixed max norm that suits step 100 is wrong by step 50000 (norms drift by orders of
magnitude), and distillation adds loss spikes when a teacher target disagrees sharply with the
student. ZClip (Kumar et al., 2025) keeps an EMA of the gradient norm's mean and variance and
clips only statistical outliers; AutoClip (Seetharaman et al., 2020) clips at a percentile of the
norms seen so far. ``max_norm`` is an explicit outer bound on either, off unless the recipe sets it:
a cap below the norms a run actually has (the demo's were 3 to 70; a real-shape 2-of-8 MoE
student's first step 4.3) turns the dynamic clipper into fixed clipping, which ``CapWatch``
reports.

Every clipper answers one question, ``decide(norm)``: the threshold to enforce this step given the
pre-clip global norm; the trainer scales the gradients. Under DeepSpeed ZeRO the optimizer clips
inside its own step, before we see the norm, so the trainer hands it ``preset_threshold()`` (the
threshold that applies to any norm this step) and afterwards reports the norm with
``decide(norm, preset=True)``, which updates the statistics the same way. ``state_dict`` makes
resume exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FIXED_DEFAULT_MAX_NORM = 1.0  # fixed mode's threshold when train.clip.max_norm is unset


@dataclass(frozen=True)
class ClipDecision:
    norm: float  # global gradient norm before clipping
    threshold: float | None  # the max norm enforced this step (None: no limit)
    capped: bool = False  # the threshold is the hard cap max_norm (not a dynamic decision)

    @property
    def clipped(self) -> bool:
        return self.threshold is not None and self.norm > self.threshold

    @property
    def scale(self) -> float:
        """Factor to multiply every gradient by (1.0 when not clipped)."""
        return self.threshold / (self.norm + 1e-6) if self.clipped else 1.0


class NoClip:
    def decide(self, norm: float, *, preset: bool = False) -> ClipDecision:
        return ClipDecision(norm, None)

    def preset_threshold(self) -> float | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FixedClip(NoClip):
    def __init__(self, max_norm: float):
        self.max_norm = max_norm

    def decide(self, norm: float, *, preset: bool = False) -> ClipDecision:
        return ClipDecision(norm, self.max_norm, capped=True)

    def preset_threshold(self) -> float | None:
        return self.max_norm


def _capped(norm: float, dynamic: float | None, cap: float | None) -> ClipDecision:
    """The decision for a dynamic threshold under an optional outer bound."""
    if cap is not None and (dynamic is None or cap < dynamic):
        return ClipDecision(norm, cap, capped=True)
    return ClipDecision(norm, dynamic)


class ZClip:
    """z-score clipping on an EMA of the norm's mean and variance.

    During ``warmup_steps`` norms are collected (only the ``max_norm`` cap applies), then mean and
    variance start from that buffer. A norm whose z-score exceeds ``z_threshold`` is clipped to
    ``mean + z_threshold * std / (z / z_threshold)`` (stronger outliers are pulled down harder),
    and the EMA is fed the clipped value so one spike does not inflate the statistics.
    """

    def __init__(self, alpha: float = 0.97, z_threshold: float = 2.5, warmup_steps: int = 25,
                 max_norm: float | None = None, eps: float = 1e-6):
        self.alpha, self.z_threshold, self.warmup_steps = alpha, z_threshold, warmup_steps
        self.max_norm, self.eps = max_norm, eps
        self.warmup_norms: list[float] = []
        self.mean: float | None = None
        self.var: float | None = None

    def decide(self, norm: float, *, preset: bool = False) -> ClipDecision:
        if not math.isfinite(norm):
            # A NaN/inf norm says nothing about the distribution: cap it and keep the statistics.
            return ClipDecision(norm, self.max_norm if self.max_norm is not None else 0.0)
        if self.mean is None:
            self._collect(norm)
            return _capped(norm, None, self.max_norm)
        dynamic = self._z_boundary() if preset else self._adaptive_threshold(norm)
        decision = _capped(norm, dynamic, self.max_norm)
        threshold = decision.threshold
        self._update(min(norm, threshold) if threshold is not None else norm)
        return decision

    def _adaptive_threshold(self, norm: float) -> float | None:
        std = math.sqrt(self.var)
        z = (norm - self.mean) / (std + self.eps)
        if z > self.z_threshold:
            return self.mean + self.z_threshold * std / (z / self.z_threshold)
        return None

    def _z_boundary(self) -> float:
        return self.mean + self.z_threshold * math.sqrt(self.var)

    def preset_threshold(self) -> float | None:
        """The norm at which z = z_threshold: larger norms are clipped to it (no adaptive
        shrinking, which needs the norm first)."""
        return _capped(0.0, None if self.mean is None else self._z_boundary(), self.max_norm).threshold

    def _collect(self, norm: float) -> None:
        self.warmup_norms.append(norm)
        if len(self.warmup_norms) >= max(1, self.warmup_steps):
            count = len(self.warmup_norms)
            self.mean = sum(self.warmup_norms) / count
            self.var = sum((x - self.mean) ** 2 for x in self.warmup_norms) / count
            self.warmup_norms = []

    def _update(self, norm: float) -> None:
        self.mean = self.alpha * self.mean + (1 - self.alpha) * norm
        self.var = self.alpha * self.var + (1 - self.alpha) * (norm - self.mean) ** 2

    def state_dict(self) -> dict:
        return {"warmup_norms": list(self.warmup_norms), "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict) -> None:
        self.warmup_norms = list(state["warmup_norms"])
        self.mean, self.var = state["mean"], state["var"]


class AutoClip:
    """Clip at the ``percentile`` of the last ``history`` norms (the first step: the cap only)."""

    def __init__(self, percentile: float = 10.0, history: int = 1000, max_norm: float | None = None):
        self.percentile, self.history, self.max_norm = percentile, history, max_norm
        self.norms: list[float] = []  # in arrival order, for the sliding window

    def decide(self, norm: float, *, preset: bool = False) -> ClipDecision:
        decision = _capped(norm, self._percentile() if self.norms else None, self.max_norm)
        if math.isfinite(norm):
            self.norms.append(norm)
            del self.norms[: -self.history]
        return decision

    def preset_threshold(self) -> float | None:
        return _capped(0.0, self._percentile() if self.norms else None, self.max_norm).threshold

    def _percentile(self) -> float:
        """Linear-interpolated percentile, as numpy's default."""
        ordered = sorted(self.norms)
        position = (len(ordered) - 1) * self.percentile / 100.0
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    def state_dict(self) -> dict:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: dict) -> None:
        self.norms = list(state["norms"])


class CapWatch:
    """Says once when the hard cap clipped most of a window of steps.

    Why: a cap under the run's typical norm makes every step a fixed clip at ``max_norm`` (the
    dynamic clipper then never decides anything), which silently scales the learning rate down.
    ``observe`` returns the warning text the first time more than ``share`` of the last
    ``window`` steps were clipped by the cap, else None.
    """

    def __init__(self, max_norm: float | None, mode: str, window: int = 20, share: float = 0.5):
        self.max_norm, self.mode, self.window, self.share = max_norm, mode, window, share
        self.recent: list[bool] = []
        self.warned = False

    def observe(self, decision: ClipDecision) -> str | None:
        if self.warned or self.max_norm is None:
            return None
        self.recent = [*self.recent, decision.clipped and decision.capped][-self.window:]
        hits = sum(self.recent)
        if len(self.recent) < self.window or hits <= self.share * self.window:
            return None
        self.warned = True
        what = ("fixed clipping" if self.mode == "fixed"
                else f"the hard cap overrode {self.mode} (fixed clipping in effect)")
        return (f"train.clip.max_norm={self.max_norm:g} clipped {hits} of the last {self.window} "
                f"steps (norms around {decision.norm:.3g}): {what}; the update is scaled down "
                f"on most steps. Raise max_norm or remove it (zclip/autoclip need no cap).")


def build_clipper(cfg) -> NoClip | FixedClip | ZClip | AutoClip:
    """From a ``distill.config.ClipConfig`` (fixed mode without ``max_norm``: 1.0)."""
    if cfg.mode == "none":
        return NoClip()
    if cfg.mode == "fixed":
        return FixedClip(cfg.max_norm if cfg.max_norm is not None else FIXED_DEFAULT_MAX_NORM)
    if cfg.mode == "zclip":
        return ZClip(cfg.zclip_alpha, cfg.zclip_z_threshold, cfg.zclip_warmup_steps, cfg.max_norm)
    if cfg.mode == "autoclip":
        return AutoClip(cfg.autoclip_percentile, cfg.autoclip_history, cfg.max_norm)
    raise ValueError(f"unknown clip mode {cfg.mode!r}")


__all__ = ["AutoClip", "CapWatch", "ClipDecision", "FixedClip", "NoClip", "ZClip", "build_clipper"]
