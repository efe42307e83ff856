"""Augmenter: levels measured on the output, probabilities over many ids, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.config import AugmentConfig
from distill.data.augment import AppliedAugmentation, Augmenter

RATE = 16000
ranges = st.tuples(st.floats(-10, 40, allow_nan=False), st.floats(0, 20, allow_nan=False)).map(
    lambda t: (t[0], t[0] + t[1])
)
sample_ids = st.text(min_size=1, max_size=20)


def speech_like(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """A non-stationary test signal (tones under an envelope), deterministic."""
    t = torch.arange(round(seconds * RATE)) / RATE
    envelope = 0.2 + 0.8 * torch.sin(2 * math.pi * 3 * t).abs()
    rng = torch.Generator().manual_seed(seed)
    freqs = 100 + 900 * torch.rand(3, generator=rng)
    return 0.3 * envelope * sum(torch.sin(2 * math.pi * f * t) for f in freqs)


def power(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().item()


def augmenter(noise=None, gain=None, **kwargs) -> Augmenter:
    cfg = AugmentConfig(
        noise={"p": 0.0, **(noise or {})}, gain={"p": 0.0, **(gain or {})}, **kwargs
    )
    return Augmenter.from_config(cfg, sample_rate=RATE)


CLEAN = speech_like()


# ---------------------------------------------------------------------------------- levels
@settings(max_examples=25, deadline=None)
@given(snr_range=ranges, sample_id=sample_ids, epoch=st.integers(0, 100))
def test_measured_snr_is_the_drawn_value_within_the_range(snr_range, sample_id, epoch):
    augment = augmenter(noise={"p": 1.0, "mode": "snr", "snr_db": snr_range})

    noisy, applied = augment(CLEAN, sample_id, epoch)

    measured = 10 * math.log10(power(CLEAN) / power(noisy - CLEAN))
    low, high = snr_range
    assert low - 0.01 <= measured <= high + 0.01
    assert measured == pytest.approx(applied.noise_snr_db, abs=0.01)
    assert applied.noise_amplitude is None and applied.gain_db is None


@settings(max_examples=25, deadline=None)
@given(db_range=ranges.map(lambda r: (r[0] - 20, r[1] - 20)), sample_id=sample_ids)
def test_measured_gain_is_the_recorded_value_within_the_range(db_range, sample_id):
    augment = augmenter(gain={"p": 1.0, "db": db_range})

    louder, applied = augment(CLEAN, sample_id, 0)

    measured = 20 * math.log10(math.sqrt(power(louder) / power(CLEAN)))
    low, high = db_range
    assert low - 1e-4 <= measured <= high + 1e-4
    assert measured == pytest.approx(applied.gain_db, abs=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    amplitude=st.tuples(st.floats(0.0005, 0.05), st.floats(0, 0.05)).map(
        lambda t: (t[0], t[0] + t[1])
    ),
    sample_id=sample_ids,
)
def test_amplitude_mode_adds_gaussian_noise_of_the_drawn_std(amplitude, sample_id):
    augment = augmenter(noise={"p": 1.0, "mode": "amplitude", "amplitude": amplitude})

    noisy, applied = augment(CLEAN, sample_id, 3)

    std = (noisy - CLEAN).double().std().item()  # 16000 samples: about 0.6 % sampling error
    low, high = amplitude
    assert low * 0.97 <= std <= high * 1.03
    assert std == pytest.approx(applied.noise_amplitude, rel=0.03)
    assert applied.noise_snr_db is None


def test_default_config_is_the_upstream_recipe():
    """docs/reference.md §1: Gaussian amplitude 0.001-0.015 and gain -12..+12 dB, each with p=0.3."""
    cfg = AugmentConfig()
    assert (cfg.noise.mode, cfg.noise.p, cfg.noise.amplitude) == ("amplitude", 0.3, (0.001, 0.015))
    assert (cfg.gain.p, cfg.gain.db) == (0.3, (-12.0, 12.0))


# --------------------------------------------------------------------------- probabilities
@pytest.mark.parametrize(("p_noise", "p_gain"), [(0.3, 0.3), (0.8, 0.1)])
def test_each_augmentation_is_applied_with_its_probability(p_noise, p_gain):
    augment = Augmenter.from_config(AugmentConfig(seed=7, noise={"p": p_noise}, gain={"p": p_gain}))
    n = 2000
    clean = CLEAN[:160]
    records = [augment(clean, f"utt-{i}", 0)[1] for i in range(n)]

    for p, hits in [
        (p_noise, sum(r.noise_amplitude is not None for r in records)),
        (p_gain, sum(r.gain_db is not None for r in records)),
    ]:
        tolerance = 4.5 * math.sqrt(p * (1 - p) / n)  # binomial, a false alarm 1 in 10^5
        assert abs(hits / n - p) <= tolerance
    both = sum(r.noise_amplitude is not None and r.gain_db is not None for r in records)
    assert abs(both / n - p_noise * p_gain) <= 4.5 * math.sqrt(p_noise * p_gain / n)


def test_probability_zero_leaves_the_waveform_untouched():
    augment = augmenter(noise={"p": 0.0, "mode": "snr"}, gain={"p": 0.0})
    for i in range(50):
        out, applied = augment(CLEAN, f"id{i}", i)
        assert torch.equal(out, CLEAN)
        assert applied == AppliedAugmentation()


def test_disabled_returns_the_input_unchanged():
    augment = augmenter(noise={"p": 1.0}, gain={"p": 1.0}, enabled=False)
    out, applied = augment(CLEAN, "a", 0)
    assert out is CLEAN and applied == AppliedAugmentation()


def test_the_input_is_never_modified_in_place():
    clean = CLEAN.clone()
    augmenter(noise={"p": 1.0}, gain={"p": 1.0})(clean, "a", 0)
    assert torch.equal(clean, CLEAN)


# ------------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("mode", ["amplitude", "snr"])
def test_same_seed_id_and_epoch_give_the_same_output(mode):
    def make():  # a fresh augmenter, as in another worker or another run
        return augmenter(seed=5, noise={"p": 1.0, "mode": mode}, gain={"p": 1.0})

    first, first_applied = make()(CLEAN, "utt-1", 2)
    make()(CLEAN, "something else first", 0)  # order must not matter
    second, second_applied = make()(CLEAN, "utt-1", 2)

    assert torch.equal(first, second) and first_applied == second_applied


@pytest.mark.parametrize(
    "other", [("utt-1", 3, 5), ("utt-2", 2, 5), ("utt-1", 2, 6)], ids=["epoch", "id", "seed"]
)
def test_a_different_epoch_id_or_seed_gives_a_different_output(other):
    def run(sample_id, epoch, seed):
        return augmenter(seed=seed, noise={"p": 1.0}, gain={"p": 1.0})(CLEAN, sample_id, epoch)

    reference, reference_applied = run("utt-1", 2, 5)
    out, applied = run(*other)

    assert not torch.equal(reference, out)
    assert applied.gain_db != reference_applied.gain_db
    assert applied.noise_amplitude != reference_applied.noise_amplitude


PINNED_AMPLITUDE = 0.009098037032808842
PINNED_GAIN_DB = -11.605322495215628


def test_draws_do_not_depend_on_pythons_salted_hash():
    """Pinned values: a change here means every recorded run's augmentation changed."""
    _, applied = augmenter(seed=0, noise={"p": 1.0}, gain={"p": 1.0})(CLEAN, "utt-1", 0)
    assert applied.noise_amplitude == pytest.approx(PINNED_AMPLITUDE, rel=1e-9)
    assert applied.gain_db == pytest.approx(PINNED_GAIN_DB, rel=1e-9)


# ------------------------------------------------------------------------------ real noise
def write_noise(folder, name, samples, rate=RATE):
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / name, samples, rate)


def test_real_noise_is_mixed_at_the_drawn_snr(tmp_path):
    rng = np.random.default_rng(0)
    hum = (0.1 * np.sin(2 * np.pi * 50 * np.arange(8000) / 8000)).astype(np.float32)
    write_noise(tmp_path / "noise", "hum.wav", hum, rate=8000)  # 1 s at 8 kHz: resampled
    hiss = rng.normal(0, 0.05, 40000).astype(np.float32)
    write_noise(tmp_path / "noise" / "sub", "hiss.flac", hiss)
    augment = augmenter(
        noise={"p": 1.0, "mode": "snr", "snr_db": (0.0, 20.0), "noise_dir": str(tmp_path / "noise")}
    )
    clean = speech_like(seconds=2.0)  # longer than hum.wav: that one must be looped

    used = set()
    for i in range(12):
        noisy, applied = augment(clean, f"utt-{i}", 0)
        added = noisy - clean
        measured = 10 * math.log10(power(clean) / power(added))
        assert measured == pytest.approx(applied.noise_snr_db, abs=0.01)
        used.add(applied.noise_file.rsplit("/", 1)[-1])
        if applied.noise_file.endswith("hum.wav"):  # the hum itself, scaled: its pitch is 50 Hz
            spectrum = np.abs(np.fft.rfft(added.numpy()))
            assert np.fft.rfftfreq(added.numel(), 1 / RATE)[spectrum.argmax()] == pytest.approx(50)
    assert used == {"hum.wav", "hiss.flac"}


def test_real_noise_choice_is_reproducible(tmp_path):
    for k in range(3):
        write_noise(tmp_path / "n", f"{k}.wav", np.random.default_rng(k).normal(0, 0.1, 20000))
    cfg = {"p": 1.0, "mode": "snr", "noise_dir": str(tmp_path / "n")}

    a, a_applied = augmenter(noise=cfg)(CLEAN, "x", 1)
    b, b_applied = augmenter(noise=cfg)(CLEAN, "x", 1)

    assert torch.equal(a, b) and a_applied == b_applied


def test_an_empty_noise_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=r"empty: no noise files"):
        augmenter(noise={"mode": "snr", "noise_dir": str(tmp_path / "empty")})


def test_a_missing_noise_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"absent: folder not found"):
        augmenter(noise={"mode": "snr", "noise_dir": str(tmp_path / "absent")})


def test_noise_dir_without_snr_mode_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="mode: snr"):
        augmenter(noise={"mode": "amplitude", "noise_dir": str(tmp_path)})


def test_a_silent_noise_file_is_an_error(tmp_path):
    write_noise(tmp_path / "n", "silence.wav", np.zeros(16000, np.float32))
    augment = augmenter(noise={"p": 1.0, "mode": "snr", "noise_dir": str(tmp_path / "n")})
    with pytest.raises(ValueError, match="silence.wav.*digital silence"):
        augment(CLEAN, "x", 0)
