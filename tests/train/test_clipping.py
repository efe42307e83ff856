"""Dynamic clipping: hand-computed thresholds, spikes clipped, steady training left alone."""

import math

import numpy as np
import pytest

from distill.config import ClipConfig
from distill.train.clipping import (
    AutoClip,
    CapWatch,
    ClipDecision,
    FixedClip,
    NoClip,
    ZClip,
    build_clipper,
)


def test_zclip_threshold_matches_the_hand_computation():
    clip = ZClip(alpha=0.97, z_threshold=2.5, warmup_steps=3)
    for norm in (1.0, 2.0, 3.0):  # warm-up: mean 2, variance 2/3
        assert clip.decide(norm).threshold is None
    decision = clip.decide(10.0)
    # z = 8 / sqrt(2/3); threshold = mean + z_t * std / (z / z_t) = 2 + 2.5^2 * (2/3) / 8
    assert decision.clipped
    assert decision.threshold == pytest.approx(2 + 6.25 * (2 / 3) / 8, rel=1e-5)
    # the EMA is fed the clipped value, not the spike
    assert clip.mean == pytest.approx(0.97 * 2 + 0.03 * decision.threshold, rel=1e-6)


def test_zclip_fires_on_a_spike_and_not_on_steady_norms():
    clip = ZClip(alpha=0.97, z_threshold=2.5, warmup_steps=25, max_norm=100.0)
    steady = [1.0 + 0.05 * math.sin(step) for step in range(200)]
    decisions = [clip.decide(n) for n in steady]
    assert not any(d.clipped for d in decisions)
    spike = clip.decide(50.0)
    assert spike.clipped and spike.threshold < 2.0
    after = [clip.decide(1.0 + 0.05 * math.sin(step)) for step in range(200, 260)]
    assert not any(d.clipped for d in after)


def test_zclip_cap_applies_during_warmup_and_after():
    clip = ZClip(warmup_steps=2, max_norm=0.5)
    assert clip.decide(1.0).threshold == 0.5 and clip.decide(1.0).clipped


def test_zclip_state_round_trip_resumes_identically():
    first = ZClip(warmup_steps=5)
    norms = [1.0, 1.2, 0.9, 1.1, 1.0, 1.05, 8.0, 1.0]
    for n in norms[:4]:
        first.decide(n)
    second = ZClip(warmup_steps=5)
    second.load_state_dict(first.state_dict())
    assert [first.decide(n) for n in norms[4:]] == [second.decide(n) for n in norms[4:]]


def test_autoclip_uses_the_percentile_of_past_norms():
    clip = AutoClip(percentile=10.0, history=100)
    past = [float(v) for v in range(1, 11)]
    for n in past:
        clip.decide(n)
    decision = clip.decide(5.0)
    assert decision.threshold == pytest.approx(np.percentile(past, 10.0))
    assert decision.clipped  # 5 > 1.9


def test_autoclip_window_forgets_old_norms():
    clip = AutoClip(percentile=50.0, history=3)
    for n in (100.0, 100.0, 1.0, 2.0, 3.0):
        clip.decide(n)
    assert clip.decide(0.0).threshold == pytest.approx(2.0)


def test_scale_brings_the_norm_to_the_threshold():
    decision = FixedClip(1.0).decide(4.0)
    assert decision.scale * 4.0 == pytest.approx(1.0, rel=1e-5)
    assert NoClip().decide(1e9).scale == 1.0


def test_build_from_config():
    assert isinstance(build_clipper(ClipConfig()), ZClip)
    assert isinstance(build_clipper(ClipConfig(mode="autoclip")), AutoClip)
    assert isinstance(build_clipper(ClipConfig(mode="none")), NoClip)
    assert build_clipper(ClipConfig(mode="fixed", max_norm=2.0)).max_norm == 2.0


def test_zclip_preset_threshold_is_the_z_boundary_and_updates_like_decide():
    clip = ZClip(alpha=0.9, z_threshold=2.0, warmup_steps=2)
    assert clip.preset_threshold() is None  # warm-up, no cap
    clip.decide(1.0)
    clip.decide(3.0)  # mean 2, variance 1
    assert clip.preset_threshold() == pytest.approx(2.0 + 2.0 * 1.0)
    decision = clip.decide(10.0, preset=True)
    assert decision.clipped and decision.threshold == pytest.approx(4.0)
    # the EMA saw the clipped value, as with decide()
    assert clip.mean == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


def test_autoclip_preset_equals_its_decision():
    clip = AutoClip(percentile=50.0, history=10)
    for n in (1.0, 2.0, 3.0):
        clip.decide(n)
    assert clip.preset_threshold() == clip.decide(100.0, preset=True).threshold == 2.0


def test_dynamic_modes_have_no_cap_by_default_so_large_steady_norms_pass():
    """Large steady norms (near 77): with the old default cap of
    1.0 every step was clipped to 1.0; unset, ZClip and AutoClip decide alone."""
    for mode in ("zclip", "autoclip"):
        clipper = build_clipper(ClipConfig(mode=mode, zclip_warmup_steps=5,
                                          autoclip_percentile=100))
        decisions = [clipper.decide(77.0 + (step % 3)) for step in range(30)]
        assert not any(d.capped for d in decisions), mode
        assert all(d.threshold is None or d.threshold >= 77.0 for d in decisions), mode
        assert all(d.scale > 0.97 for d in decisions), mode  # not scaled to 1/77
    assert build_clipper(ClipConfig(mode="fixed")).max_norm == 1.0  # fixed keeps its default


def test_an_explicit_cap_bounds_the_dynamic_threshold_and_says_so():
    clip = ZClip(warmup_steps=3, max_norm=5.0)
    warm = [clip.decide(n) for n in (70.0, 77.0, 80.0)]
    assert all(d.threshold == 5.0 and d.capped and d.clipped for d in warm)
    steady = clip.decide(75.0)  # z < 2.5: ZClip would not clip; the cap does
    assert steady.threshold == 5.0 and steady.capped and steady.clipped
    spike = ZClip(warmup_steps=3, max_norm=1e9)
    for n in (1.0, 2.0, 3.0):
        spike.decide(n)
    dynamic = spike.decide(10.0)  # ZClip's own threshold (about 2.52) is under the cap
    assert dynamic.clipped and not dynamic.capped and dynamic.threshold < 3.0
    auto = AutoClip(percentile=50.0, max_norm=2.0)
    for n in (10.0, 20.0):
        auto.decide(n)
    assert auto.decide(15.0) == ClipDecision(15.0, 2.0, capped=True)


def test_cap_watch_warns_once_when_the_cap_clips_most_steps():
    watch = CapWatch(max_norm=1.0, mode="zclip", window=10)
    clipper = ZClip(warmup_steps=3, max_norm=1.0)
    messages = [watch.observe(clipper.decide(40.0 + step % 5)) for step in range(30)]
    fired = [i for i, m in enumerate(messages) if m is not None]
    assert fired == [9]  # the first full window, then never again
    assert "train.clip.max_norm=1" in messages[9] and "10 of the last 10" in messages[9]


def test_cap_watch_stays_quiet_when_the_cap_only_catches_rare_spikes():
    watch = CapWatch(max_norm=10.0, mode="fixed", window=10)
    clipper = FixedClip(10.0)
    norms = [1.0] * 8 + [50.0] * 2  # 2 of 10 clipped: the cap doing its job
    assert all(watch.observe(clipper.decide(n)) is None for n in norms * 3)
    assert CapWatch(None, "zclip", window=1).observe(ClipDecision(5.0, 1.0)) is None
