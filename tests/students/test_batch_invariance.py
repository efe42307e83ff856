"""A clip's audio tokens and greedy answer do not depend on its batch-mates.

Reference: the same clip run alone (batch of one). Before the fix a 2 s and a 5 s clip decoded
together differed from each alone in 15 of 88 audio tokens: BEATs kept a partly real 160 ms
patch that the clip alone drops, and padded BEATs positions reached the Q-Former non-zero.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from students.beats import token_padding_mask

SR = 16000
INSTRUCTIONS = ["Say it.", "Describe the sound in detail.", "What do you hear?"]


def alone_and_together(student, waves, instructions):
    with torch.no_grad():
        batch = student.processor(waves, instructions)
        tokens = student.encode_audio(batch)
        answers = student.generate(batch, max_new_tokens=5, num_beams=1)
        for i, (wave, instruction) in enumerate(zip(waves, instructions, strict=True)):
            single = student.processor([wave], [instruction])
            count = int(batch["audio_lengths"][i])  # the tokens this clip gives the LLM
            torch.testing.assert_close(
                tokens[i, :count], student.encode_audio(single)[0, :count], rtol=1e-4, atol=1e-5
            )
            alone = student.generate(single, max_new_tokens=5, num_beams=1)[0]
            together = answers[i, : alone.numel()]
            assert torch.equal(together, alone), f"clip {i} of {len(waves)}: answer differs"


def test_the_reported_pair_2s_and_5s(student, noise):
    alone_and_together(student, [noise(2.0, 1), noise(5.0, 2)], INSTRUCTIONS[:2])


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    lengths=st.lists(st.integers(min_value=SR // 4, max_value=7 * SR), min_size=2, max_size=4),
    seed=st.integers(0, 1000),
)
@pytest.mark.slow
def test_random_lengths_and_compositions(student, lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(n, generator=generator) for n in lengths]
    instructions = [INSTRUCTIONS[(seed + i) % 3] for i in range(len(waves))]
    alone_and_together(student, waves, instructions)


@pytest.mark.parametrize(
    ("samples", "real_patches"),
    [
        (400 + 160 * 15, 1),  # 16 frames: one whole patch
        (400 + 160 * 15 - 1, 0),  # one sample short of the 16th frame
        (16000, 6),  # 98 frames -> 6 patches (the 7th would be partly real)
        (399, 0),  # not even one frame
    ],
)
def test_token_mask_counts_only_patches_of_real_frames(samples, real_patches):
    # Kaldi frames (snip_edges): 1 + (n - 400) // 160; 16 frames a patch; 8 frequency patches.
    mask = torch.zeros(1, 20000, dtype=torch.bool)
    mask[0, samples:] = True
    tokens = token_padding_mask(mask, time_patches=10, freq_patches=8, patch_frames=16)
    assert tokens.shape == (1, 80)
    assert int((~tokens).sum()) == real_patches * 8
    assert not tokens[0, : real_patches * 8].any() and tokens[0, real_patches * 8 :].all()


def test_padded_beats_positions_are_zero(student, noise):
    batch = student.processor([noise(1.5), noise(4.0, 1)], ["a", "b"])
    with torch.no_grad():
        features, mask = student.beats(batch["beats_waveform"], batch["beats_padding_mask"])
        alone, _ = student.beats(noise(1.5)[None])
    assert mask[0].sum() > 0 and not mask[1].any()
    assert torch.all(features[0][mask[0]] == 0)
    real = int((~mask[0]).sum())
    assert real == alone.size(1)
    torch.testing.assert_close(features[0, :real], alone[0], rtol=1e-4, atol=1e-5)
