"""``train.encoder_memo_mb``: a frozen encoder's outputs kept by content.

References: the function called directly on the whole batch (what the memo must return), a count
of the rows the function was given (what it must not recompute), byte sizes worked out by hand
(what the bound keeps), and the student's own encoder without a memo.
"""

from __future__ import annotations

import pytest
import torch

from distill.config import RecipeError, load_recipe
from students import SalmonnStudent
from students.encoder_memo import EncoderMemo, content_key


class CountingDouble:
    """x -> 2x, recording how many rows it was given."""

    def __init__(self):
        self.rows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.size(0)
        return 2 * x


def _rows(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 5, generator=torch.Generator().manual_seed(seed))


def test_returns_what_the_function_returns_and_computes_each_clip_once():
    memo, fn = EncoderMemo(max_bytes=10**6), CountingDouble()
    first, second = _rows(1), _rows(2)
    torch.testing.assert_close(memo.encode(fn, first), 2 * first, rtol=0, atol=0)
    assert fn.rows == 4
    mixed = torch.stack([second[0], first[2], first[0], second[1]])
    torch.testing.assert_close(memo.encode(fn, mixed), 2 * mixed, rtol=0, atol=0)
    assert fn.rows == 6  # only second[0] and second[1] were new
    assert (memo.hits, memo.misses) == (2, 6)


def test_key_covers_values_shape_and_dtype():
    x = _rows(3)[0]
    assert content_key(x) == content_key(x.clone())
    changed = x.clone()
    changed[1, 2] += 1e-6
    assert content_key(changed) != content_key(x)
    assert content_key(x.reshape(5, 3)) != content_key(x)
    assert content_key(x.double()) != content_key(x)


def test_the_bound_drops_the_least_recently_used():
    entry = 3 * 5 * 4  # one [3, 5] float32 output: 60 bytes
    memo, fn = EncoderMemo(max_bytes=2 * entry), CountingDouble()
    a, b, c = _rows(4, 3)
    memo.encode(fn, torch.stack([a, b]))
    memo.encode(fn, a[None])  # a is now the most recent: b goes first
    memo.encode(fn, c[None])
    assert memo.bytes == 2 * entry and len(memo.entries) == 2
    fn.rows = 0
    memo.encode(fn, torch.stack([a, c]))
    assert fn.rows == 0
    memo.encode(fn, b[None])
    assert fn.rows == 1


def test_an_output_larger_than_the_bound_is_not_kept():
    memo, fn = EncoderMemo(max_bytes=10), CountingDouble()
    x = _rows(5, 1)
    torch.testing.assert_close(memo.encode(fn, x), 2 * x, rtol=0, atol=0)
    assert memo.bytes == 0 and not memo.entries


def test_student_with_a_memo_encodes_as_without(make_cfg, noise):
    torch.manual_seed(3)
    cfg = make_cfg(qformer={"audio_tokens": "clip"}, whisper={"pad_to_30s": False})
    student = SalmonnStudent.from_config(cfg).eval()
    assert student.speech_memo is None  # the trainer attaches one (train.encoder_memo_mb)
    student.speech_memo = EncoderMemo(64 * 2**20)
    waves = [noise(1.0, 1), noise(2.5, 2), noise(1.0, 3)]
    again = [waves[1], noise(2.5, 4), waves[0]]
    with torch.no_grad():
        first = student.encode_audio(student.processor(waves, ["a"] * 3))
        remembered = student.encode_audio(student.processor(again, ["a"] * 3))
        memo, student.speech_memo = student.speech_memo, None
        expected = student.encode_audio(student.processor(again, ["a"] * 3))
        plain_first = student.encode_audio(student.processor(waves, ["a"] * 3))
    assert (memo.hits, memo.misses) == (2, 4)
    torch.testing.assert_close(first, plain_first, rtol=0, atol=0)
    torch.testing.assert_close(remembered, expected, rtol=1e-5, atol=1e-5)


def test_a_trained_encoder_cannot_have_a_memo(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nmodel:\n  whisper: {freeze: false}\n"
                      "train:\n  encoder_memo_mb: 64\n")
    with pytest.raises(RecipeError, match="train.encoder_memo_mb needs model.whisper.freeze: true"):
        load_recipe(recipe)
    recipe.write_text("name: x\ntrain:\n  encoder_memo_mb: 64\n")
    assert load_recipe(recipe).train.encoder_memo_mb == 64
