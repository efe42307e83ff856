"""``model.qformer.audio_tokens: clip``: a short clip brings only the windows it covers.

References: counts worked out by hand from Whisper's 20 ms encoder frames; the LLM input of a
sample built by hand (torch.cat of its prefix embeddings, its first n audio tokens, its suffix
and target embeddings) and run alone through the decoder; and the same clip run alone
(batch invariance, as tests/students/test_batch_invariance.py does for the padded layout).
"""

from __future__ import annotations

import pytest
import torch

from students import SalmonnStudent
from tests.students.test_batch_invariance import INSTRUCTIONS, alone_and_together

SR = 16000


@pytest.fixture(scope="module")
def clip_student(make_cfg):
    torch.manual_seed(3)
    return SalmonnStudent.from_config(make_cfg(qformer={"audio_tokens": "clip"})).eval()


@pytest.mark.parametrize(
    ("samples", "tokens"),
    [
        (SR, 3),  # 1 s = 50 encoder frames of 20 ms; windows start at 0, 17, 34: 3
        (SR // 2, 3),  # padded to the 1 s minimum first
        (2 * SR, 6),  # 100 frames: ceil(100 / 17) = 6
        (51 * 320, 3),  # exactly three windows of frames
        (51 * 320 + 1, 4),  # one sample into the next window's first frame
        (30 * SR, 88),  # 1500 frames: 89 starts, but only 88 whole windows exist
    ],
)
def test_token_count_by_hand(clip_student, noise, samples, tokens):
    processor = clip_student.processor
    wave = processor.prepare_waveform(torch.zeros(samples))
    assert processor.audio_token_count(wave.numel()) == tokens
    batch = processor([torch.zeros(samples)], ["a"])
    assert batch["audio_lengths"].tolist() == [tokens]


def test_all_mode_keeps_88(student, noise):
    batch = student.processor([noise(1), noise(3, 1)], ["a", "b"])
    assert batch["audio_lengths"].tolist() == [88, 88]


def test_sequence_matches_a_hand_built_one(clip_student, noise):
    student = clip_student
    waves, instructions = [noise(1.2, 1), noise(3.5, 2)], ["Say it.", "What do you hear?"]
    batch = student.processor(waves, instructions, ["one two three", "a dog"])
    with torch.no_grad():
        out = student(batch)
        audio = student.encode_audio(batch)  # [B, 88, H]: every window is still encoded
        for i in range(2):
            n = int(batch["audio_lengths"][i])
            assert n == {0: 4, 1: 11}[i]  # 60 frames -> 4 windows; 175 frames -> 11
            pieces = [
                student.embed_tokens(batch["prefix_ids"][i, : batch["prefix_lengths"][i]]),
                audio[i, :n],
                student.embed_tokens(batch["suffix_ids"][i, : batch["suffix_lengths"][i]]),
                student.embed_tokens(batch["target_ids"][i, : batch["target_lengths"][i]]),
            ]
            alone = torch.cat(pieces)[None]
            hidden = student.causal_lm.get_decoder()(inputs_embeds=alone).last_hidden_state[0]
            length = alone.size(1)
            assert int(out.attention_mask[i].sum()) == length
            torch.testing.assert_close(out.hidden_states[i, :length], hidden, rtol=1e-4,
                                       atol=1e-5)
            start = length - int(batch["target_lengths"][i])
            assert out.labels[i, start - 1] == batch["target_ids"][i, 0]


def test_clip_layout_is_batch_invariant(clip_student, noise):
    alone_and_together(clip_student, [noise(1.0, 1), noise(2.5, 2), noise(6.0, 3)],
                       INSTRUCTIONS)


def test_audio_lengths_beyond_the_encoded_tokens_are_refused(clip_student, noise):
    from students.prompting import assemble_inputs

    batch = clip_student.processor([noise(1)], ["a"])
    batch["audio_lengths"] = torch.tensor([89])
    with torch.no_grad(), pytest.raises(ValueError, match="audio_lengths up to 89"):
        assemble_inputs(clip_student.embed_tokens, clip_student.encode_audio(batch), batch,
                        padding_side="left", with_targets=False)
