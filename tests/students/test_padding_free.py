"""``train.padding_free``: the batch's sequences as one row of real tokens.

Reference: the same student on the same batch with padding (the [B, T] path every other test
checks against transformers): the target tokens' hidden states, the loss and its gradients must
match. Lengths are chosen to differ (1 s to 6 s of audio, one- to nine-token targets), so a mask
that let one sample see another would show.
"""

from __future__ import annotations

import pytest
import torch

from students import SalmonnStudent


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def short_student(request, make_cfg):
    torch.manual_seed(5)
    cfg = make_cfg(beats=False, qformer={"audio_tokens": "clip"},
                   whisper={"pad_to_30s": False}, llm={"attn_implementation": request.param})
    return SalmonnStudent.from_config(cfg).eval()


def _batch(student, noise):
    waves = [noise(1.0, 1), noise(6.0, 2), noise(2.5, 3)]
    targets = ["a", "the black dog runs at the station today", "low hum"]
    return student.processor(waves, ["Transcript", "Caption", "Transcript"], targets)


def _loss(student, out) -> torch.Tensor:
    """The targets' cross-entropy, each token weighted by its place (so the order counts)."""
    rows = out.labels != -100
    logits = torch.nn.functional.linear(out.hidden_states[rows], student.lm_head_weight)
    per_token = torch.nn.functional.cross_entropy(logits, out.labels[rows], reduction="none")
    return (per_token * torch.linspace(1, 2, per_token.numel())).sum()


def test_targets_see_what_they_see_with_padding(short_student, noise):
    student = short_student
    batch = _batch(student, noise)
    with torch.no_grad():
        padded = student(batch)
        free = student(batch, padding_free=True)
    real = int(padded.attention_mask.sum())
    assert free.hidden_states.shape[:2] == (1, real)
    assert real < padded.attention_mask.numel()  # the lengths differ: there was padding
    rows = padded.labels != -100
    assert torch.equal(free.labels[free.labels != -100], padded.labels[rows])
    torch.testing.assert_close(free.hidden_states[free.labels != -100],
                               padded.hidden_states[rows], rtol=1e-5, atol=1e-5)


def test_loss_and_gradients_match(short_student, noise):
    student = short_student
    batch = _batch(student, noise)
    trained = [p for p in student.parameters() if p.requires_grad]
    grads = []
    for padding_free in (False, True):
        student.zero_grad()
        loss = _loss(student, student(batch, padding_free=padding_free))
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in trained]))
    (loss_padded, padded), (loss_free, free) = grads
    assert loss_free == pytest.approx(loss_padded, rel=1e-5)
    # float32 sums in another order: a parameter whose gradient counts (above 1e-6 of the whole)
    # within 1e-3 of it; one that is zero up to rounding (one query per window: its softmax over
    # one key has no gradient) within 1e-5 of the whole
    whole = float(torch.cat([g.flatten() for g in padded]).norm())
    assert whole > 0
    for a, b in zip(padded, free, strict=True):
        error, size = float((b - a).norm()), float(a.norm())
        assert error <= (1e-3 * size if size > 1e-6 * whole else 1e-5 * whole)
    student.zero_grad()
