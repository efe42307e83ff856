"""Cross-tokenizer rows: which student row learns from which teacher row, and the loss.

Self-consistency: with the same tokenizer on both sides, every group is one-to-one and the map
is the identity, so the cross-tokenizer path must give the same-vocabulary path's loss. The
different pair (SmolLM2 teacher, Whisper tiny.en student) is checked against groups worked out
by hand from the tokens of "unbelievable 12345 tokens" (tests/data/test_char_spans.py).
"""

import numpy as np
import pytest
import torch

from distill.config import Recipe
from distill.data.char_spans import spans_in_text, vocab_pieces
from distill.data.cross_rows import cross_rows, pair_rows
from distill.data.targets import encode_target
from distill.data.vocab_map import exact_string_map
from distill.losses import HiddenStates, TopKTargets
from distill.train.loop import build_mixed_loss, build_uld_fallback

TEXT = "unbelievable 12345 tokens"
FLOOR = -40.0


def target_spans(tokenizer, text):
    ids = encode_target(tokenizer, text)
    pieces = vocab_pieces(tokenizer)
    return ids, spans_in_text([pieces[i] for i in ids], text)


def teacher_rows(n, vocab, k, seed=0):
    logits = torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3
    logp = logits.log_softmax(-1)
    top = logp.topk(k, dim=-1)
    rest = torch.log1p(-top.values.exp().sum(-1))
    return top.indices.numpy(), top.values.numpy(), rest.numpy()


def test_same_tokenizer_gives_the_same_loss_as_the_same_vocabulary_path(tokenizer):
    ids, spans = target_spans(tokenizer, "Hello world, 12345 café 東京!")
    t_ids, t_lp, t_rest = teacher_rows(len(ids), len(tokenizer), k=8)
    rows = cross_rows(spans, spans, ids, ids, t_ids, t_lp, t_rest,
                      exact_string_map(tokenizer, tokenizer), mode="auto", floor=FLOOR)
    assert rows.counts == (len(ids), 0, 0)
    torch.manual_seed(1)
    hidden, weight = torch.randn(len(ids), 16), torch.randn(len(tokenizer), 16) * 0.3
    labels = torch.tensor(ids)
    loss = build_mixed_loss(Recipe(name="x"))
    same = loss(HiddenStates(hidden, weight), TopKTargets(*map(torch.from_numpy,
                                                                (t_ids, t_lp, t_rest))), labels)
    cross = loss(HiddenStates(hidden[torch.from_numpy(rows.mapped)], weight),
                 TopKTargets(*map(torch.from_numpy, (rows.ids, rows.logprobs, rows.rest))),
                 labels[torch.from_numpy(rows.mapped)])
    assert float(cross.total) == pytest.approx(float(same.total), rel=1e-6)
    assert float(cross.parts["kd"]) > 0


def test_groups_decide_the_path_of_each_row(tokenizer, whisper_tokenizer):
    s_ids, s_spans = target_spans(whisper_tokenizer, TEXT)  # un bel iev able Ġ123 45 Ġtokens <end>
    t_ids, t_spans = target_spans(tokenizer, TEXT)  # un belie vable Ġ 1 2 3 4 5 Ġtokens <end>
    assert (len(s_ids), len(t_ids)) == (8, 11)
    lookup = exact_string_map(tokenizer, whisper_tokenizer).lookup
    mapped, uld = pair_rows(s_spans, t_spans, "auto", s_ids, t_ids, lookup)
    assert mapped == [(0, 0), (6, 9), (7, 10)]
    assert uld == [(1, 1), (2, 2), (4, 3), (5, 7)]  # "able" (row 3) has no teacher row left
    assert pair_rows(s_spans, t_spans, "map", s_ids, t_ids, lookup) == (mapped, [])
    assert pair_rows(s_spans, t_spans, "uld", s_ids, t_ids, lookup) == ([], sorted(mapped + uld))


def test_mapped_rows_are_in_student_ids_and_uld_rows_keep_the_teachers(tokenizer,
                                                                        whisper_tokenizer):
    s_ids, s_spans = target_spans(whisper_tokenizer, TEXT)
    t_ids, t_spans = target_spans(tokenizer, TEXT)
    k = 4
    top_ids = np.tile(np.array(t_ids)[:, None], (1, k))  # each row: the teacher's own next token
    top_ids[:, 1:] = [tokenizer.convert_tokens_to_ids(t) for t in ("belie", "Ġtokens", "Ġ")]
    top_ids[9] = [tokenizer.convert_tokens_to_ids(t) for t in ("Ġtokens", "belie", "Ġ", "1")]
    lp = np.log(np.array([[0.6, 0.2, 0.1, 0.05]] * len(t_ids)))
    rows = cross_rows(s_spans, t_spans, s_ids, t_ids, top_ids, lp, None,
                      exact_string_map(tokenizer, whisper_tokenizer), mode="auto", floor=FLOOR)
    assert rows.counts == (3, 4, 1)
    assert rows.mapped.tolist() == [True, False, False, False, False, False, True, True]
    # row 6 ("Ġtokens"): Ġtokens 0.6 and Ġ 0.1 and 1 0.05 map, belie (0.2) joins the rest 0.05
    student_row = rows.ids[1].tolist()
    tokens = whisper_tokenizer.convert_ids_to_tokens(student_row[:3])
    assert tokens == ["Ġtokens", "Ġ", "1"]
    np.testing.assert_allclose(np.exp(rows.logprobs[1][:3]), [0.6, 0.1, 0.05], rtol=1e-5)
    np.testing.assert_allclose(np.exp(rows.rest[1]), 0.25, rtol=1e-5)
    assert rows.logprobs[1][3] == FLOOR
    # ULD rows are the teacher's rows 1, 2, 3, 7 as they were (teacher ids)
    np.testing.assert_array_equal(rows.uld_ids, top_ids[[1, 2, 3, 7]])


def test_uld_rows_give_a_finite_loss_with_a_gradient(tokenizer, whisper_tokenizer):
    s_ids, s_spans = target_spans(whisper_tokenizer, TEXT)
    t_ids, t_spans = target_spans(tokenizer, TEXT)
    top = teacher_rows(len(t_ids), len(tokenizer), k=8)
    rows = cross_rows(s_spans, t_spans, s_ids, t_ids, *top,
                      exact_string_map(tokenizer, whisper_tokenizer), mode="uld", floor=FLOOR)
    hidden = torch.randn(int(rows.uld.sum()), 16, requires_grad=True)
    weight = torch.randn(len(whisper_tokenizer), 16)
    uld = build_uld_fallback(Recipe(name="x"))
    loss = uld(HiddenStates(hidden, weight),
               TopKTargets(*map(torch.from_numpy, (rows.uld_ids, rows.uld_logprobs,
                                                   rows.uld_rest))))
    loss.backward()
    assert torch.isfinite(loss) and float(loss) > 0 and hidden.grad.abs().sum() > 0
