"""Dynamic clipping: hand-computed thresholds, spikes clipped, steady training left alone."""

import math

import numpy as np
import pytest

from distill.config import ClipConfig
from distill.train.clipping import AutoClip, FixedClip, NoClip, ZClip, build_clipper


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
