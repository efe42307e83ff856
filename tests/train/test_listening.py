"""The 'is the student hearing?' diagnostic: the swap, the gain against a hand computation, and
the once-only warning."""

import math

import pytest
import torch

from distill.train.listening import AudioGain, ListeningWatch, other_clips_audio


def test_each_clip_gets_the_audio_of_the_clip_before_it():
    audio = torch.arange(3.0)[:, None, None].expand(3, 2, 4)  # clip i's tokens are all i
    assert other_clips_audio(audio)[:, 0, 0].tolist() == [2.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="at least two clips"):
        other_clips_audio(audio[:1])


def test_gain_is_the_ce_difference_per_answer_token_over_every_batch():
    gain = AudioGain()
    assert math.isnan(gain.gain)
    # batch 1: two tokens; own audio puts p = 0.5 on the answer, the other clip's p = 0.25
    own = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]))
    other = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]))
    gain.add(own, other, torch.tensor([0, 1]))
    # batch 2: one token the audio does not change (p = 0.5 both ways)
    same = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    gain.add(same, same, torch.tensor([0]))
    expected = (2 * (math.log(4) - math.log(2)) + 0.0) / 3
    assert gain.tokens == 3
    assert gain.gain == pytest.approx(expected, rel=1e-6)


def test_watch_warns_once_at_or_after_its_start_when_the_audio_hardly_matters():
    watch = ListeningWatch(after=200, threshold=0.1)
    said = [watch.observe(step, value) for step, value in
            [(100, 0.0), (200, 0.5), (300, float("nan")), (400, 0.004), (500, 0.0)]]
    assert [text is not None for text in said] == [False, False, False, True, False]
    assert "raises the validation loss by 0.004 nats a token at step 400" in said[3]
